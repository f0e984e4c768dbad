"""Why does (or does not) the context help? Gates and kWTA winners per task of finished runs.

    python experiments/permuted_mnist_analysis.py --data_dir=data/tfds \\
        results/permuted_mnist/dendrites_task_s0 results/permuted_mnist/dendrites_zero_s0

For each run directory written by experiments/permuted_mnist.py (summary.json
+ params.msgpack) it rebuilds the network, runs the test images of every task
with that task's context, and reports per hidden layer:

* ``open_gates``: fraction of units whose gate is above 0.5 (mean over tasks);
* ``units_used``: fraction of units active (fire, or ReLU output > 0) on at
  least 1 % of a task's images;
* ``overlap``: mean over task pairs of :func:`mtspark_jax.vision.permuted.usage_overlap`
  of the units' activity frequencies (1: two tasks use the same units as often);
* ``gate_agreement``: mean over task pairs of the fraction of units whose
  gate is on the same side of 0.5 for both tasks (0.5: independent halves);

the operations and estimated energy per image with each task's own context
(:func:`mtspark_jax.vision.permuted.energy_per_image`, mean over tasks),
and per task the test accuracy of the final network next to that of a
linear probe: a new read-out fitted (softmax regression, Adam) on the final
network's last-layer activity for ``--probe_examples`` training images of
the task. A probe far above the network's accuracy means the hidden layers
still separate the task and the shared read-out forgot it.

Prints one line per run and layer and writes analysis.json next to summary.json.
"""

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import serialization

from mtspark_jax import xla_options
from mtspark_jax.vision import data, permuted

_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory with the prepared MNIST.")
_EXAMPLES = flags.DEFINE_integer("examples", 2000, "Test images per task.")
_PROBE = flags.DEFINE_integer("probe_examples", 10000, "Training images per task for the linear probe (0: no probe).")
xla_options.define_flag()


@functools.partial(jax.jit, static_argnames=("config",))
def _apply(config, variables, images, contexts, task):
    """The evaluation's logits (:func:`permuted.logits_on`, every task seen) and the
    last hidden layer's activity with the task's own context."""
    x = permuted.pixels(config, images)
    logits = permuted.logits_on(config, variables, x, contexts, task, contexts.shape[0])
    _, inter = config.network().apply(variables, x, contexts[task][None] * config.context_scale,
                                      mutable=["intermediates"])
    return logits, inter["intermediates"][f"activity{config.num_layers - 1}"][0]


def _features(config, variables, images: np.ndarray, contexts, task: int, chunk: int = 2000) -> np.ndarray:
    """Last hidden layer's activity ``[N, width]`` and the network's logits ``[N, 10]``."""
    feats, logits = [], []
    for start in range(0, len(images), chunk):
        out, rates = _apply(config, variables, jnp.asarray(images[start : start + chunk]), contexts, jnp.int32(task))
        feats.append(np.asarray(rates))
        logits.append(np.asarray(out))
    return np.concatenate(feats), np.concatenate(logits)


def _probe(train_x, train_y, test_x, test_y, steps: int = 500) -> float:
    """Test accuracy of softmax regression fitted on ``train_x [N, D]`` (full batch, Adam 1e-2)."""
    w = {"w": jnp.zeros((train_x.shape[1], 10)), "b": jnp.zeros(10)}
    tx = optax.adam(1e-2)

    def loss(w):
        return optax.softmax_cross_entropy_with_integer_labels(train_x @ w["w"] + w["b"], train_y).mean()

    @jax.jit
    def step(w, s):
        g = jax.grad(loss)(w)
        u, s = tx.update(g, s)
        return optax.apply_updates(w, u), s

    s = tx.init(w)
    for _ in range(steps):
        w, s = step(w, s)
    return float(((test_x @ w["w"] + w["b"]).argmax(-1) == test_y).mean())


def _load_variables(config: permuted.PermutedConfig, path: str) -> dict:
    """``{"params", "masks"}`` from the launcher's params.msgpack (a file holding the bare
    parameters, as of runs without weight masks, loads too)."""
    template = permuted.create_train_state(config, jax.random.key(0)).variables
    raw = serialization.msgpack_restore(open(path, "rb").read())
    if "params" not in raw:
        return {"params": serialization.from_state_dict(template["params"], raw), "masks": {}}
    return serialization.from_state_dict(template, raw)


def analyse(run_dir: str, test: tuple[np.ndarray, np.ndarray], train: tuple[np.ndarray, np.ndarray]) -> dict:
    """``train``: the whole training split; the run's first ``train_examples`` give the prototypes."""
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    config = permuted.PermutedConfig(**summary["config"])
    variables = _load_variables(config, os.path.join(run_dir, "params.msgpack"))
    perms = permuted.task_permutations(config.seed, config.num_tasks)
    contexts = jnp.asarray(permuted.task_contexts(config, train[0][: summary["train_examples"]], perms))
    acts = [jax.device_get(permuted.layer_activity(config, variables, jnp.asarray(permuted.permute_images(test[0], p)),
                                                   contexts[t]))
            for t, p in enumerate(perms)]
    pairs = list(itertools.combinations(range(config.num_tasks), 2))
    out = {"variant": config.variant, "units": config.units, "seed": config.seed, "mean_accuracy": summary["mean_accuracy"], "layers": {}}
    for layer in range(config.num_layers):
        active = [a[f"active{layer}"] for a in acts]
        row = {
            "units_used": float(np.mean([np.mean(a >= 0.01) for a in active])),
            "overlap": float(np.mean([permuted.usage_overlap(active[i], active[j]) for i, j in pairs])),
        }
        if config.dendrites:
            gates = [a[f"gate{layer}_out"] > 0.5 for a in acts]
            row["open_gates"] = float(np.mean(gates))
            row["gate_agreement"] = float(np.mean([np.mean(gates[i] == gates[j]) for i, j in pairs]))
        out["layers"][f"layer{layer}"] = row
    energies = [permuted.energy_per_image(config, variables, a) for a in acts]
    out["energy"] = {k: float(np.mean([e[k] for e in energies])) for k in energies[0]}
    if _PROBE.value:
        out["network_accuracy"], out["probe_accuracy"] = [], []
        probe_x, probe_y = train[0][: _PROBE.value], train[1][: _PROBE.value]
        for t, p in enumerate(perms):
            test_f, logits = _features(config, variables, permuted.permute_images(test[0], p), contexts, t)
            train_f, _ = _features(config, variables, permuted.permute_images(probe_x, p), contexts, t)
            out["network_accuracy"].append(float((logits.argmax(-1) == test[1]).mean()))
            out["probe_accuracy"].append(_probe(jnp.asarray(train_f), jnp.asarray(probe_y), jnp.asarray(test_f),
                                                jnp.asarray(test[1])))
    return out


def main(argv):
    xla_options.apply_flag()
    test = data.load_split("mnist", "test", _DATA_DIR.value)
    test = (test[0][: _EXAMPLES.value], test[1][: _EXAMPLES.value])
    train = data.load_split("mnist", "train", _DATA_DIR.value)
    for run_dir in argv[1:]:
        result = analyse(run_dir, test, train)
        with open(os.path.join(run_dir, "analysis.json"), "w") as f:
            json.dump(result, f, indent=1)
        for layer, row in result["layers"].items():
            cells = " ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"{os.path.basename(run_dir.rstrip('/'))} {layer}: {cells} (mean accuracy {result['mean_accuracy']:.4f})")
        e = result["energy"]
        print(f"  per image: first-layer MACs {e['first_layer_macs']:.4g}, event ops {e['event_ops']:.4g} "
              f"({'SynOps' if result['units'] == 'spiking' else 'MACs on non-zero outputs'}), dense MACs "
              f"{e['dense_macs']:.4g}, energy {e['energy_uJ']:.4g} uJ (dense {e['dense_energy_uJ']:.4g} uJ)")
        if "probe_accuracy" in result:
            for name in ("network_accuracy", "probe_accuracy"):
                print(f"  {name} per task: " + " ".join(f"{a:.3f}" for a in result[name])
                      + f" (mean {np.mean(result[name]):.4f})")


if __name__ == "__main__":
    app.run(main)
