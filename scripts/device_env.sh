# Sourced by the device scripts (scripts/gpu_atari.sh, benchmarks/gpu_loop.sh) with OUT set:
# moves to the repository root, sets PY (the interpreter: $PYTHON or python3), puts the
# repository on PYTHONPATH, turns off JAX's GPU memory preallocation, and writes the GPU
# (OUT/gpu.txt) and the jax/flax versions and devices (OUT/versions.txt), printing both.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  > "$OUT/versions.txt" 2>&1
cat "$OUT/gpu.txt" "$OUT/versions.txt"
