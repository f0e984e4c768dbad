#!/usr/bin/env bash
# Every GPU check of a device window, in one call of about 9.5 minutes. Each part has its own
# time limit and a failing part does not stop the others:
#
# 1. pong: scripts/gpu_atari.sh, the `pong_gpu` preset trained for PONG_S seconds (default
#    240), then its greedy evaluation over full episodes beside the random policy;
# 2. sweep: benchmarks/sweeps.py --task=atari, 8 Pong members on shared pools against one
#    solo run (SWEEP_LIMIT seconds, default 100);
# 3. speed: scripts/gpu_speed.sh, the train-step table (ours in float32 and bfloat16 against
#    the peers) and the paper network's RL loop, fused and host, in LOOP_DTYPES (default
#    float32), with the projected wall time of a 12M-step paper run.
#
#   PYTHONPATH=$PWD/.devsite bash scripts/gpu_window.sh OUT
#
# (.devsite: the envpool and envpool-assets wheels unpacked, where the machine has no EnvPool.)
#
# PARTS (default "pong sweep speed") picks parts; the sizes of each part come from the
# variables its own script reads. Everything lands in OUT/window.tgz (a device call returns
# at most 8 files) and the summaries are printed.
set -uo pipefail
OUT="${1:?usage: gpu_window.sh OUT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
W="$(mktemp -d)/window"
mkdir -p "$W"
git rev-parse HEAD > "$W/commit.txt" 2>/dev/null || true
stamp() { echo "== $1 at $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$W/parts.txt"; }

for part in ${PARTS:-pong sweep speed}; do
  stamp "$part"
  case "$part" in
    pong)
      TIME_LIMIT="${PONG_S:-240}" EVAL_GRACE="${PONG_GRACE:-70}" bash scripts/gpu_atari.sh "$W/pong" ${PONG_ARGS:-} \
        > "$W/pong.log" 2>&1
      echo "pong exit $?" | tee -a "$W/parts.txt"
      tail -4 "$W/pong.log" ;;
    sweep)
      PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "${SWEEP_LIMIT:-100}" "$PY" benchmarks/sweeps.py \
        --task=atari ${SWEEP_ARGS:-} --out="$W/SWEEPS_GPU.md" > "$W/sweep.log" 2>&1
      echo "sweep exit $?" | tee -a "$W/parts.txt"
      tail -3 "$W/SWEEPS_GPU.md" 2>/dev/null ;;
    speed)
      LOOP_DTYPES="${LOOP_DTYPES:-float32}" bash scripts/gpu_speed.sh "$W/speed" > "$W/speed.log" 2>&1
      echo "speed exit $?" | tee -a "$W/parts.txt"
      cat "$W/speed/projection.txt" 2>/dev/null
      grep -h "env-steps/s\|ms" "$W"/speed/rl_loop_*.log 2>/dev/null | head -12 ;;
    *) echo "unknown part $part (expected pong, sweep or speed)" | tee -a "$W/parts.txt" ;;
  esac
done
stamp end
(cd "$W/.." && tar czf "$OUT/window.tgz" --exclude=checkpoints --exclude=tb window)
ls -la "$OUT"
