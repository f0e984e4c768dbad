r"""Re-evaluate a finished image run with per-data-set BatchNorm statistics.

Loads the newest Orbax checkpoint of a ``train_images.py`` workdir and prints,
per data set, the test accuracy with the running statistics the run used
(mixed over every data set trained) and with statistics of its own
(:func:`mtspark_jax.vision.classification.with_own_batch_stats`). The statistics
come from the data set's training split, or, for a continual run with
rehearsal, from the data set's rehearsal memory once its stage is over (the
memory the run kept, :func:`mtspark_jax.vision.classification.stage_memory`).
A run trained with ``--task_bn_stats`` also saved, with each checkpoint, the
statistics it evaluated every data set with; the last column uses those.

    python experiments/eval_task_bn.py --workdir=runs/images/joint_use_context_s0
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import log_levels  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished train_images.py workdir (with checkpoints/).", required=True)


def main(argv):
    del argv
    log_levels.quiet()
    from mtspark_jax.vision import classification as C
    from mtspark_jax.vision import data as D

    workdir = os.path.abspath(_WORKDIR.value)
    try:
        run = C.load_run(workdir)
    except FileNotFoundError as e:
        raise app.UsageError(str(e))
    cfg, state = run.config, run.state
    stages = cfg.stages()
    print(f"{workdir}: checkpoint {run.step}")
    print("| data set | running statistics | own statistics | statistics from | own statistics saved by the run |")
    print("|---|---|---|---|---|")
    for name in cfg.datasets:
        test = D.Loader({name: D.load_split(name, "test", cfg.data_dir)}, cfg.eval_batch_size,
                        shape=cfg.image_shape, shuffle=False)
        source, label = D.load_split(name, "train", cfg.data_dir), "training split"
        stage = next(i for i, names in enumerate(stages) if name in names)
        if cfg.protocol == "continual" and cfg.memory_size and stage < len(stages) - 1:
            source = C.stage_memory(cfg, source, stage)
            label = f"rehearsal memory ({len(source[1])})"
        before = C.evaluate(state, test.epoch(0), cfg.use_context)["accuracy"]
        after = C.evaluate(C.with_own_batch_stats(state, cfg, name, source), test.epoch(0), cfg.use_context)["accuracy"]
        saved = "-"
        if name in run.task_batch_stats:
            stats = state.replace(batch_stats=run.task_batch_stats[name])
            saved = f"{100 * C.evaluate(stats, test.epoch(0), cfg.use_context)['accuracy']:.2f} %"
        print(f"| {name} | {100 * before:.2f} % | {100 * after:.2f} % | {label} | {saved} |", flush=True)


if __name__ == "__main__":
    app.run(main)
