#!/usr/bin/env bash
# GPU measurements of the RL loop for a short GPU window (about 8 minutes):
# the learner update with the time scans unrolled vs rolled (scan_unroll.py),
# the same update with ops.conv_nhwc on vs off (scan_unroll.py
# --compare=conv_nhwc; the library uses it on CPUs only),
# then rl_loop.py (raw EnvPool, update, fused scan loop, host
# loop, bound) on the paper network (16 envs/game, batch 256; replay capped at
# 2^17 per task to save memory), its scan loop again with one target forward
# pass per update (--set=batch_targets=false), and the small cpu preset.
#
#   bash benchmarks/gpu_loop.sh OUTDIR
#
# BASELINE=DIR (a copy of an older mtspark_jax/ and experiments/, with this
# rl_loop.py in DIR/benchmarks/) also times that code's scan loop on the paper
# network in the same run, for an A/B on the same machine.
#
# EnvPool must be importable (on a machine without it: its wheel and
# envpool-assets' unpacked into a folder on PYTHONPATH). Each part has its own time limit; logs go to
# OUTDIR as they are written.
set -uo pipefail
OUT="${1:?usage: gpu_loop.sh OUTDIR}"
mkdir -p "$OUT"
source "$(dirname "$0")/../scripts/device_env.sh"
part() {  # name limit_s args...
  local name=$1 lim=$2; shift 2
  echo "== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  timeout "$lim" "$PY" -u "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" | tee -a "$OUT/$name.log"
  echo "$name exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
}
part scan_unroll "${LIM_UNROLL:-90}" benchmarks/scan_unroll.py --preset=paper --rounds=5 --reps=20
part conv_nhwc "${LIM_S2D:-90}" benchmarks/scan_unroll.py --preset=paper --rounds=5 --reps=20 \
  --compare=conv_nhwc
part rl_loop_paper "${LIM_PAPER:-200}" benchmarks/rl_loop.py --preset=paper --buffer_size=131072 \
  --chunk_iters=100 --repeats=3
part rl_loop_paper_unbatched "${LIM_UNB:-120}" benchmarks/rl_loop.py --preset=paper --buffer_size=131072 \
  --chunk_iters=100 --repeats=3 --nohost --set=batch_targets=false
if [ -n "${BASELINE:-}" ]; then
  part rl_loop_paper_baseline "${LIM_BASE:-120}" "$BASELINE/benchmarks/rl_loop.py" --preset=paper \
    --buffer_size=131072 --chunk_iters=100 --repeats=3 --nohost
fi
part rl_loop_cpu "${LIM_CPU:-100}" benchmarks/rl_loop.py --preset=cpu --chunk_iters=100 --repeats=3
