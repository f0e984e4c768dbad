#!/usr/bin/env bash
# Downloads the pure-python peer wheels (no dependencies) into DIR, to carry
# to a machine without a package registry (the GPU box): then
#   PEER_WHEELS=DIR bash benchmarks/gpu_bench.sh OUTDIR
# Spyx's data-loading deps (grain, h5py) are not needed: nets_spyx.py stubs them.
set -euo pipefail
DIR="${1:?usage: fetch_peer_wheels.sh DIR}"
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR" \
  spikingjelly snntorch spyx nir jax-tqdm loguru tqdm
ls -l "$DIR"
