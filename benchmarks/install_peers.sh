#!/usr/bin/env bash
# Creates the benchmark virtual environment (default .bench-venv at the repository root) with
# our pinned JAX stack plus the peers: torch (CPU), SpikingJelly, snnTorch, Spyx.
# The library's own venv is never touched; the library never imports torch.
#
#   bash benchmarks/install_peers.sh [VENV_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.bench-venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

# Our stack, same pins as pyproject.toml.
"$PIP" install -q "jax==0.10.2" "flax==0.12.8" "optax==0.2.8" "chex==0.1.92" numpy
# The package itself without its RL/env deps (envpool, tfds, ...).
"$PIP" install -q --no-deps -e "$ROOT"

# torch: the CPU wheel (a local wheel satisfies this where present).
"$PIP" install -q "torch==2.13.0" || "$PIP" install -q --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# SpikingJelly without deps: its requirements pull a CUDA torch (~5 GB).
"$PIP" install -q --no-deps spikingjelly
"$PIP" install -q tqdm scipy matplotlib loguru  # spikingjelly's small runtime imports

# snnTorch (pure python; depends on torch, numpy, pandas, matplotlib).
"$PIP" install -q snntorch

# Spyx: depends on dm-haiku; install it without letting it move our jax pins.
if ! "$PIP" install -q spyx "jax==0.10.2" "flax==0.12.8" "optax==0.2.8" "chex==0.1.92"; then
  echo "WARNING: spyx did not install next to jax 0.10.2; the Spyx column will be skipped" >&2
fi

"$VENV/bin/python" - <<'PY'
import importlib
for m in ["jax", "flax", "optax", "torch", "spikingjelly", "snntorch", "spyx", "haiku"]:
    try:
        mod = importlib.import_module(m)
        print(f"{m:14s} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # report, do not fail: peers are optional
        print(f"{m:14s} MISSING ({type(e).__name__}: {e})")
PY
