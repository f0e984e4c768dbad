"""Multi-task spiking image classification: joint or continual, context on or off.

    python experiments/train_images.py --workdir=runs/images/joint \\
        --datasets=mnist,fashion_mnist --protocol=joint --image_shape=28,28,1
    python experiments/train_images.py --workdir=runs/images/continual \\
        --datasets=mnist,fashion_mnist --protocol=continual
    python experiments/train_images.py ... --nouse_context        # ablation

Every flag is a field of mtspark_jax.classification.ImageConfig (same name,
same default). Prepare the data first (experiments/prepare_data.py or
scripts/get_offline_data.sh). Writes TensorBoard logs, metrics.csv, Orbax
checkpoints, results.md, energy.md and results.json under --workdir, and
prints the results table and the spike rate / energy per image table.
"""

import dataclasses
import os
import sys

from absl import app, flags, logging

from mtspark_jax import classification, data, xla_options

_D = classification.ImageConfig()
_WORKDIR = flags.DEFINE_string("workdir", "runs/images", "Output directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
flags.DEFINE_list("datasets", list(_D.datasets), f"Data sets among {list(data.DATASETS)}; continual: stage order.")
flags.DEFINE_enum("protocol", _D.protocol, list(classification.PROTOCOLS), "joint or continual.")
flags.DEFINE_bool("use_context", _D.use_context, "Feed the data-set context to the dendrites (--nouse_context: ablation).")
flags.DEFINE_integer("epochs", _D.epochs, "Epochs per stage.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Training batch size.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam peak learning rate (cosine decay per stage).")
flags.DEFINE_list("image_shape", [str(v) for v in _D.image_shape], "Common input shape H,W,C (C = 1 or 3).")
flags.DEFINE_integer("time_steps", _D.time_steps, "Simulation steps T.")
flags.DEFINE_integer("hidden", _D.hidden, "Units of the dendrite-gated spiking layer.")
flags.DEFINE_string("convs", ";".join(",".join(map(str, c)) for c in _D.convs),
                    "Trunk convolutions 'features,kernel,stride;...'.")
flags.DEFINE_bool("batch_norm", _D.batch_norm, "BatchNorm after each convolution.")
flags.DEFINE_enum("dendrites", _D.dendrites, ["per_neuron", "layer_shared"], "Dendrite formulation.")
flags.DEFINE_integer("kwta", _D.kwta, "k-winners-take-all in the gated layer (0: off).")
flags.DEFINE_float("tau", _D.tau, "LIF time constant.")
flags.DEFINE_float("v_threshold", _D.v_threshold, "Firing threshold.")
flags.DEFINE_enum("surrogate", _D.surrogate, ["sigmoid", "atan", "fast_sigmoid"], "Surrogate gradient.")
flags.DEFINE_integer("seed", _D.seed, "Seed for parameters and shuffling.")
flags.DEFINE_string("data_dir", _D.data_dir, "TFDS data directory with the prepared data sets.")
flags.DEFINE_integer("max_train_examples", _D.max_train_examples, "Use the first N training examples per data set (0: all).")
flags.DEFINE_integer("max_eval_examples", _D.max_eval_examples, "Use the first N test examples per data set (0: all).")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between training-metric logs.")
flags.DEFINE_bool("checkpoint", _D.checkpoint, "Save an Orbax checkpoint after every epoch.")
flags.DEFINE_bool("data_parallel", _D.data_parallel, "Split each batch over all visible devices (jax.sharding).")
flags.DEFINE_integer("memory_size", _D.memory_size,
                     "Continual: examples kept per learned data set and rehearsed in later stages (0: off).")
flags.DEFINE_float("memory_share", _D.memory_share, "Continual: fraction of a later stage's batches from the memory.")
flags.DEFINE_integer("max_shift", _D.max_shift,
                     "Augmentation: random shifts up to N pixels (+ flips for Fashion-MNIST / CIFAR-10); 0: off.")
flags.DEFINE_list("augment_datasets", list(_D.augment_datasets),
                  "Data sets --max_shift applies to (empty: all), e.g. mnist.")
flags.DEFINE_bool("task_bn_stats", _D.task_bn_stats,
                  "Evaluate every data set with BatchNorm statistics of its own (picked by the context).")


def config_from_flags() -> classification.ImageConfig:
    """Flags -> ImageConfig (one flag per field)."""
    values = {}
    for field in dataclasses.fields(classification.ImageConfig):
        value = flags.FLAGS[field.name].value
        if field.name in ("datasets", "augment_datasets"):
            value = tuple(value)
        elif field.name == "image_shape":
            value = tuple(int(v) for v in value)
        elif field.name == "convs":
            value = tuple(tuple(int(v) for v in c.split(",")) for c in value.split(";") if c.strip())
        values[field.name] = value
    return classification.ImageConfig(**values)


xla_options.define_flag()


def main(argv):
    xla_options.apply_flag()  # before the first JAX computation
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        config = config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        rows = classification.train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value)
    except data.DataNotFoundError as e:
        sys.exit(f"error: {e}")
    print(classification.results_table(config, rows))
    energy_md = os.path.join(_WORKDIR.value, "energy.md")
    if os.path.exists(energy_md):
        print("\nSpike rate per layer and estimated energy per image (final network, test sets):")
        print(open(energy_md).read().strip())
    print(f"results written to {_WORKDIR.value}/results.md")


if __name__ == "__main__":
    app.run(main)
