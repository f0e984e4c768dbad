#!/usr/bin/env bash
# GPU table of the network benchmarks, for a short GPU window (about 2 minutes).
#
#   bash benchmarks/gpu_bench.sh OUTDIR
#
# Runs ours (JAX) always; Spyx if importable; the PyTorch peers on CUDA if
# torch sees a GPU and SpikingJelly / snnTorch import. The peers are pure
# python: `bash benchmarks/fetch_peer_wheels.sh DIR` (on a machine with PyPI)
# downloads them (default DIR: benchmarks/wheels, which the device tool
# carries as an untracked file), and PEER_WHEELS=DIR installs them with --no-deps.
# Missing peers are skipped and listed in OUTDIR/frameworks.txt.
# FRAMEWORKS_EXTRA adds rows of ours (e.g. ours+bf16: dtype=bfloat16);
# CONFIGS, ROUNDS and REPS set the table's sizes.
# Writes OUTDIR/BENCHMARKS_GPU.md and .json.
set -uo pipefail
OUT="${1:?usage: gpu_bench.sh OUTDIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

PEER_WHEELS="${PEER_WHEELS:-$PWD/benchmarks/wheels}"
if [ -n "${PEER_WHEELS:-}" ] && ls "$PEER_WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps "$PEER_WHEELS"/*.whl || echo "peer wheels did not install" >&2
fi

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUT/frameworks.txt" 2>&1 <<'PY'
import importlib
for m in ["jax", "flax", "optax", "torch", "spikingjelly", "snntorch", "spyx"]:
    try:
        mod = importlib.import_module(m)
        extra = ""
        if m == "jax":
            extra = f" devices={mod.devices()}"
        if m == "torch":
            extra = f" cuda={mod.cuda.is_available()}"
        print(m, getattr(mod, "__version__", "?"), extra)
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
PY
cat "$OUT/frameworks.txt"

FWS="ours${FRAMEWORKS_EXTRA:+,$FRAMEWORKS_EXTRA}"
if (cd benchmarks && "$PY" -c "import nets_spyx") 2>/dev/null; then FWS="$FWS,spyx,spyx_layerwise"; fi
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$PY" -c "import spikingjelly.activation_based.neuron" 2>/dev/null && FWS="$FWS,spikingjelly"
  "$PY" -c "import snntorch" 2>/dev/null && FWS="$FWS,snntorch"
fi
echo "frameworks: $FWS"

timeout "${GPU_BENCH_TIMEOUT:-170}" "$PY" benchmarks/run_all.py --gpu --no-extras \
  --frameworks "$FWS" --rounds "${ROUNDS:-3}" --reps "${REPS:-20}" \
  --configs "${CONFIGS:-mtspark_add:train:32,mtspark_add:act:8,dsqn:train:32}" \
  --out "$OUT" 2>&1 | tee "$OUT/run.log"
echo "exit ${PIPESTATUS[0]}"
ls -l "$OUT"
