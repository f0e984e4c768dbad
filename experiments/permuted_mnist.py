"""Permuted MNIST, continual (Iyer et al. 2022): an MLP with active dendrites and kWTA, spiking or ReLU.

    python experiments/permuted_mnist.py --workdir=results/permuted_mnist/dendrites_task_s0 --seed=0
    python experiments/permuted_mnist.py ... --context=zero        # ablation: no task signal
    python experiments/permuted_mnist.py ... --nodendrites         # ablation: kWTA only

Numenta's recipe (784-2048-2048-10 ReLU, kWTA 5 %, 50 % weight sparsity,
prototype context, Adam 5e-4; mtspark_jax.vision.permuted.RECIPES) and the
rows of their table:

    python experiments/permuted_mnist.py --recipe=numenta --variant=ad_kwta --workdir=...
    python experiments/permuted_mnist.py --recipe=numenta --variant=kwta_only --workdir=...
    python experiments/permuted_mnist.py --recipe=numenta --variant=mlp --workdir=...
    python experiments/permuted_mnist.py --recipe=numenta --variant=mlp_tuned --workdir=...
    python experiments/permuted_mnist.py --recipe=numenta --units=spiking --time_steps=4 --workdir=...

--recipe and --variant pick the base config (permuted.preset); every other
flag but --workdir / --data_dir / --max_* / --save_params is a field of
mtspark_jax.vision.permuted.PermutedConfig (same name) and, when set,
overrides the base. Reads the prepared TFDS MNIST
(experiments/prepare_data.py) from --data_dir. Writes under --workdir:
metrics.csv (one row per epoch and per test after each task), summary.json
(experiment, recipe, variant, units, config, per-task final accuracies, the
accuracy matrix, mean accuracy, wall and CPU seconds, the load average at
the start and the end, machine, command line, git commit) and params.msgpack
(the final parameters and weight masks, ``{"params", "masks"}``,
flax.serialization).

Resuming: after each task the launcher writes checkpoint.msgpack (the
training state with Adam's moments, the accuracy matrix so far, the
seconds spent and how far metrics.csv had got; about 0.5 GB at Numenta's
width) and deletes it when the run ends. The same command on the same
--workdir goes on from the task after the last checkpoint; the result is the
one an uninterrupted run gives (the shuffles depend on the seed, the task
and the epoch only). A checkpoint written by another config is an error.
"""

import csv
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from flax import serialization  # noqa: E402

from experiments import log_levels, provenance  # noqa: E402
from mtspark_jax import config_flags, workdir, xla_options  # noqa: E402
from mtspark_jax.vision import data, permuted  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/permuted_mnist", "Output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory with the prepared MNIST.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 0, "Use the first N training examples (0: all); for tuning.")
_SAVE_PARAMS = flags.DEFINE_bool("save_params", True, "Write the final parameters to params.msgpack (for analysis).")
_MAX_TEST = flags.DEFINE_integer("max_test_examples", 0, "Use the first N test examples (0: all); for tuning.")
_RECIPE = flags.DEFINE_enum("recipe", "default", sorted(permuted.RECIPES),
                            "Base setting (permuted.RECIPES): default (the spiking runs) or numenta "
                            "(Iyer et al. 2022).")
_VARIANT = flags.DEFINE_enum("variant", "ad_kwta", sorted(permuted.VARIANTS),
                             "Row of Numenta's table applied to the recipe (permuted.VARIANTS): ad_kwta (as is), "
                             "kwta_only (no dendrites), ad_only (no kWTA), mlp (no dendrites, no kWTA, dense), "
                             "mlp_tuned (the MLP with Numenta's Adam 3e-6, 5 epochs per task and init).")
config_flags.define_flags(permuted.PermutedConfig, base=permuted.PermutedConfig(), base_label="default recipe")
xla_options.define_flag()


def config_from_flags() -> permuted.PermutedConfig:
    """``permuted.preset(--recipe, --variant)`` with every set config flag applied."""
    return config_flags.config_from_flags(permuted.preset(_RECIPE.value, _VARIANT.value))


def _take(split, limit):
    return split if limit <= 0 else (split[0][:limit], split[1][:limit])


CHECKPOINT = "checkpoint.msgpack"


def load_checkpoint(path: str, config: permuted.PermutedConfig) -> dict | None:
    """The checkpoint at ``path`` (None if there is none); UsageError when another config wrote it."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        ckpt = serialization.msgpack_restore(f.read())
    if ckpt["config"] != _config_json(config):
        raise app.UsageError(f"{path} was written by another config ({ckpt['config']}); "
                             "delete it or use another --workdir")
    return ckpt


def save_checkpoint(path: str, ckpt: dict) -> None:
    """Writes ``ckpt`` to ``path`` through a temporary file, so a kill mid-write keeps the previous one."""
    with open(path + ".tmp", "wb") as f:
        f.write(serialization.msgpack_serialize(ckpt))
    os.replace(path + ".tmp", path)


def _config_json(config: permuted.PermutedConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


@workdir.report_errors  # a workdir another run is writing: one line, exit 2
def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()  # before the first JAX computation
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e))
    wall0, cpu0, load_start = time.time(), time.process_time(), list(os.getloadavg())
    try:
        train = _take(data.load_split("mnist", "train", _DATA_DIR.value), _MAX_TRAIN.value)
        test = _take(data.load_split("mnist", "test", _DATA_DIR.value), _MAX_TEST.value)
    except data.DataNotFoundError as e:
        sys.exit(f"error: {e}")
    workdir.claim(_WORKDIR.value)  # creates it; held until exit
    ckpt_path = os.path.join(_WORKDIR.value, CHECKPOINT)
    ckpt = load_checkpoint(ckpt_path, config)
    resume, resumed_after = None, []
    if ckpt is not None:  # the time and load of the earlier sessions count; metrics.csv back to the checkpoint
        resume = (ckpt["state"], ckpt["accuracy_matrix"])
        wall0, cpu0 = wall0 - float(ckpt["wall_seconds"]), cpu0 - float(ckpt["cpu_seconds"])
        load_start, resumed_after = list(ckpt["load_average_start"]), list(ckpt["resumed_after_tasks"])
        resumed_after.append(len(ckpt["accuracy_matrix"]))
        print(f"resuming after task {len(ckpt['accuracy_matrix']) - 1} from {ckpt_path}", flush=True)
    columns = ["time", "kind", "task", "epoch", "eval_task", "loss", "accuracy"]
    metrics_path = os.path.join(_WORKDIR.value, "metrics.csv")
    if ckpt is not None:
        with open(metrics_path, "r+") as f:
            f.truncate(int(ckpt["metrics_bytes"]))
    with open(metrics_path, "a" if ckpt is not None else "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        if ckpt is None:
            writer.writeheader()

        def log(row):
            writer.writerow({"time": f"{time.time() - wall0:.1f}", **row})
            f.flush()
            if row["kind"] == "test" and row["eval_task"] == row["task"]:
                print(f"task {row['task']}: test accuracy {row['accuracy']:.4f} "
                      f"({time.time() - wall0:.0f} s)", flush=True)

        def after_task(task, state, matrix):
            save_checkpoint(ckpt_path, {
                "config": _config_json(config), "state": serialization.to_state_dict(state),
                "accuracy_matrix": matrix, "wall_seconds": time.time() - wall0,
                "cpu_seconds": time.process_time() - cpu0, "load_average_start": load_start,
                "resumed_after_tasks": resumed_after, "metrics_bytes": f.tell()})

        result = permuted.run_continual(config, train, test, log, after_task, resume)
    summary = {
        "experiment": "permuted_mnist",
        "recipe": _RECIPE.value,
        "variant": config.variant,
        "row": _VARIANT.value,
        "units": config.units,
        "context": config.context,
        "dendrites": config.dendrites,
        "kwta": config.kwta,
        "seed": config.seed,
        "width": config.width,
        "k": config.k,
        "config": dataclasses.asdict(config),
        "train_examples": len(train[1]),
        "test_examples": len(test[1]),
        "final_accuracies": result["final_accuracies"],
        "mean_accuracy": result["mean_accuracy"],
        "accuracy_matrix": result["accuracy_matrix"],
        "wall_seconds": round(time.time() - wall0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "resumed_after_tasks": resumed_after,
        "machine": provenance.machine(),
    }
    provenance.write_summary(os.path.join(_WORKDIR.value, "summary.json"), summary)
    if _SAVE_PARAMS.value:
        with open(os.path.join(_WORKDIR.value, "params.msgpack"), "wb") as f:
            f.write(serialization.to_bytes(result["state"].variables))
    os.remove(ckpt_path)
    print(f"{_RECIPE.value} {config.variant} ({config.units}) seed {config.seed}: mean accuracy over "
          f"{config.num_tasks} tasks {summary['mean_accuracy']:.4f}; wall {summary['wall_seconds']} s, CPU {summary['cpu_seconds']} s")


if __name__ == "__main__":
    app.run(main)
