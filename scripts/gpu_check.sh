#!/usr/bin/env bash
# One-shot check on a GPU machine: network benchmarks vs peers, RL-loop throughput,
# and a three-game MTSpark_ADD training run. Each part has its own time limit, and a
# failing part does not stop the others. Writes logs and one tarball under OUT.
#
#   bash scripts/gpu_check.sh OUT            # device machine (PYTHONPATH=.devsite for EnvPool)
#   TRAIN_STEPS=2000 BENCH=0 bash scripts/gpu_check.sh /tmp/out   # CPU dry run
set -uo pipefail
OUT="${1:?usage: gpu_check.sh OUT}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
WORK=$(mktemp -d)
"$PY" -c "import jax, flax, optax, envpool; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/versions.txt" 2>&1

if [ "${BENCH:-1}" = 1 ]; then
  GPU_BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}" timeout $(( ${BENCH_TIMEOUT:-150} + 30 )) \
    bash benchmarks/gpu_bench.sh "$WORK/bench" > "$OUT/bench.log" 2>&1
  cp "$WORK/bench/BENCHMARKS_GPU.md" "$OUT/" 2>/dev/null
fi

timeout "${LOOP_TIMEOUT:-120}" "$PY" benchmarks/rl_loop.py --preset="${LOOP_PRESET:-paper}" \
  --chunk_iters="${LOOP_CHUNK:-100}" --repeats=2 > "$OUT/rl_loop.log" 2>&1
echo "rl_loop exit $?" >> "$OUT/rl_loop.log"

start=$(date +%s)
timeout "${TRAIN_TIMEOUT:-300}" "$PY" experiments/train_atari.py --workdir="$WORK/atari" --preset=paper \
  --buffer_size="${TRAIN_BUFFER:-200000}" --total_steps="${TRAIN_STEPS:-240000}" \
  --eps_decay_steps="${TRAIN_EPS:-120000}" --eval_every="${TRAIN_EVAL:-80000}" --eval_episodes=2 \
  --eval_max_steps=4500 --checkpoint_every=100000000 --noprogress > "$OUT/atari.log" 2>&1
echo "train_atari exit $? after $(( $(date +%s) - start )) s" >> "$OUT/atari.log"
(cd "$WORK" && tar czf "$OUT/results.tgz" --exclude='checkpoints' bench atari 2>/dev/null)
ls -la "$OUT"
