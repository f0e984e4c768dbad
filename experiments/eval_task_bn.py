r"""Re-evaluate a finished image run with per-data-set BatchNorm statistics.

Loads the newest Orbax checkpoint of a ``train_images.py`` workdir and prints,
per data set, the test accuracy with the running statistics the run used
(mixed over every data set trained) and with statistics of its own
(:func:`mtspark_jax.classification.recalibrate_batch_stats`). The statistics
come from the data set's training split, or, for a continual run with
rehearsal, from the data set's rehearsal memory once its stage is over (the
same memory the run kept: ``memory_subset`` with the run's seed).

    python experiments/eval_task_bn.py --workdir=runs/images/joint_use_context_s0
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished train_images.py workdir (with checkpoints/).", required=True)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    import jax
    import optax
    import orbax.checkpoint as ocp

    from mtspark_jax import classification as C
    from mtspark_jax import data as D

    workdir = os.path.abspath(_WORKDIR.value)
    raw = json.load(open(os.path.join(workdir, "config.json")))
    raw.update(datasets=tuple(raw["datasets"]), image_shape=tuple(raw["image_shape"]),
               convs=tuple(tuple(c) for c in raw["convs"]))
    cfg = C.ImageConfig(**raw)
    state = C.create_train_state(jax.random.key(0), cfg.network(), cfg.image_shape,
                                 optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, 1)))
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    if step is None:
        raise app.UsageError(f"no checkpoint under {workdir}/checkpoints")
    saved = mgr.restore(step, args=ocp.args.StandardRestore(
        {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}))
    state = state.replace(params=saved["params"], batch_stats=saved["batch_stats"])
    stages = cfg.stages()
    print(f"{workdir}: checkpoint {step}")
    print("| data set | running statistics | own statistics | statistics from |")
    print("|---|---|---|---|")
    for name in cfg.datasets:
        test = D.Loader({name: D.load_split(name, "test", cfg.data_dir)}, cfg.eval_batch_size,
                        shape=cfg.image_shape, shuffle=False)
        train = D.load_split(name, "train", cfg.data_dir)
        stage = next(i for i, names in enumerate(stages) if name in names)
        source, label = train, "training split"
        if cfg.protocol == "continual" and cfg.memory_size and stage < len(stages) - 1:
            source = C.memory_subset(train, cfg.memory_size, cfg.seed + 1000 * stage)
            label = f"rehearsal memory ({len(source[1])})"
        own = C.recalibrate_batch_stats(state, D.Loader({name: source}, cfg.batch_size, seed=cfg.seed + 7,
                                                        shape=cfg.image_shape).epoch(0), cfg.use_context)
        before = C.evaluate(state, test.epoch(0), cfg.use_context)["accuracy"]
        after = C.evaluate(state.replace(batch_stats=own), test.epoch(0), cfg.use_context)["accuracy"]
        print(f"| {name} | {100 * before:.2f} % | {100 * after:.2f} % | {label} |", flush=True)


if __name__ == "__main__":
    app.run(main)
