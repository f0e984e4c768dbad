#!/usr/bin/env bash
# The speed measurements a device window is for, in one run of about 8 minutes:
#
# 1. train-step table (benchmarks/run_all.py --gpu): ours in float32 and
#    bfloat16 (ours+bf16) against Spyx and the PyTorch peers on CUDA where they
#    import (benchmarks/gpu_bench.sh installs them from PEER_WHEELS), MTSpark_ADD
#    at batch 32 and 256, DSQN at 32;
# 2. the RL loop on the paper network (benchmarks/rl_loop.py --preset=paper):
#    raw EnvPool, the update, the fused scan loop and the host loop, in float32
#    and in bfloat16;
# 3. the projected wall time of a paper run (12M agent steps over three games)
#    from the fused loop's env-steps/s in 2.
#
#   bash scripts/gpu_speed.sh OUT      # device machine (PYTHONPATH=.devsite for EnvPool)
#
# Sizes and limits come from the environment (the CPU test sets tiny ones):
# CONFIGS, ROUNDS, REPS, BENCH_LIMIT (s) for 1; LOOP_PRESET, LOOP_BUFFER,
# LOOP_CHUNK, LOOP_REPEATS, LOOP_LIMIT (s), LOOP_SET (more TrainConfig
# overrides, key=value,...), LOOP_ARGS (more rl_loop.py flags, e.g.
# --nohost) and LOOP_DTYPES (default "float32 bfloat16") for 2; PAPER_STEPS for 3. Each part has its own
# time limit and a failing part does not stop the others; logs go to OUT.
set -uo pipefail
OUT="${1:?usage: gpu_speed.sh OUT}"
mkdir -p "$OUT"
source "$(dirname "$0")/device_env.sh"

CONFIGS="${CONFIGS:-mtspark_add:train:32,mtspark_add:train:256,dsqn:train:32}" ROUNDS="${ROUNDS:-3}" \
  REPS="${REPS:-20}" GPU_BENCH_TIMEOUT="${BENCH_LIMIT:-170}" FRAMEWORKS_EXTRA="ours+bf16" \
  timeout $(( ${BENCH_LIMIT:-170} + 60 )) bash benchmarks/gpu_bench.sh "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "train-step table exit $? ($OUT/bench/BENCHMARKS_GPU.md)"

loop() {  # name dtype
  timeout "${LOOP_LIMIT:-120}" "$PY" -u benchmarks/rl_loop.py --preset="${LOOP_PRESET:-paper}" \
    --buffer_size="${LOOP_BUFFER:-131072}" --chunk_iters="${LOOP_CHUNK:-100}" --repeats="${LOOP_REPEATS:-3}" \
    --set=dtype="$2${LOOP_SET:+,$LOOP_SET}" ${LOOP_ARGS:-} 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" > "$OUT/$1.log"
  echo "$1 exit ${PIPESTATUS[0]}" >> "$OUT/$1.log"
  cat "$OUT/$1.log"
}
for dtype in ${LOOP_DTYPES:-float32 bfloat16}; do
  case "$dtype" in float32) loop rl_loop_f32 float32 ;; bfloat16) loop rl_loop_bf16 bfloat16 ;; esac
done

"$PY" - "$OUT" "${PAPER_STEPS:-12000000}" <<'PY' | tee "$OUT/projection.txt"
import re, sys
out, steps = sys.argv[1], int(sys.argv[2])
import os
for name in ("rl_loop_f32", "rl_loop_bf16"):
    if not os.path.exists(f"{out}/{name}.log"):
        continue
    text = open(f"{out}/{name}.log").read()
    m = re.search(r"4\. training chunk, learning.*?:\s+([0-9.]+) env-steps/s", text)
    if m is None:
        print(f"{name}: no fused-loop rate in the log")
        continue
    rate = float(m.group(1))
    print(f"{name}: fused loop {rate:.0f} env-steps/s; {steps} agent steps would take {steps / rate / 3600:.2f} h")
PY
