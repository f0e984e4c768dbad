"""Multi-task spiking image classification: joint or continual, context on or off.

    python experiments/train_images.py --workdir=runs/images/joint \\
        --datasets=mnist,fashion_mnist --protocol=joint --image_shape=28,28,1
    python experiments/train_images.py --workdir=runs/images/continual \\
        --datasets=mnist,fashion_mnist --protocol=continual
    python experiments/train_images.py ... --nouse_context        # ablation
    python experiments/train_images.py --workdir=runs/images/summary --preset=mnist_fashion

Every field of mtspark_jax.vision.classification.ImageConfig is a flag of the same
name; an unset flag keeps the ``--preset`` value (``default``: ImageConfig's
defaults; the others in experiments/configs/images.py). Trunks are written
``features:kernel:stride,...`` (``--convs=64:5:2,128:3:2``). Prepare the
data first (experiments/prepare_data.py or scripts/get_offline_data.sh). Writes TensorBoard logs, metrics.csv, Orbax
checkpoints, results.md, energy.md and results.json under --workdir, and
prints the results table and the spike rate / energy per image table.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import log_levels  # noqa: E402
from experiments.configs import get_image_preset  # noqa: E402
from mtspark_jax import config_flags, workdir, xla_options  # noqa: E402
from mtspark_jax.vision import classification, data  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/images", "Output directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
_PRESET = flags.DEFINE_string("preset", "default", "Starting config, one of experiments/configs/images.py.")
config_flags.define_flags(classification.ImageConfig, base=get_image_preset("default"), base_label="default preset")


def config_from_flags() -> classification.ImageConfig:
    """The preset with every set flag applied (ValueError for a bad value)."""
    return config_flags.config_from_flags(get_image_preset(_PRESET.value))


xla_options.define_flag()


@workdir.report_errors  # a workdir in use, or a write that fails: one line
def main(argv):
    log_levels.quiet()
    xla_options.apply_flag()  # before the first JAX computation
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
