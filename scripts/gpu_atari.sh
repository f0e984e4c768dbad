#!/usr/bin/env bash
# Pong on one GPU: one task, MTSpark_ADD, the `pong_gpu` preset (experiments/configs/presets.py),
# trained for at most TIME_LIMIT seconds (default 420) of wall time and then evaluated greedily
# over full episodes, with the random policy beside it. Fits a 9-minute device call.
#
#   bash scripts/gpu_atari.sh OUT [extra train_atari.py flags]
#
# Writes OUT/run/ (metrics.csv, eval.csv, learning_curves.png: returns against agent steps and
# against wall time, summary.json with the command and commit), OUT/train.log, OUT/gpu.txt and
# OUT/versions.txt. EnvPool must be importable (on a machine without it, put an unpacked
# envpool + envpool-assets on PYTHONPATH). Extra flags override the preset, e.g.
# `--preset=pong --total_steps=2000` for a short check on a CPU.
set -uo pipefail
OUT="${1:?usage: gpu_atari.sh OUT [train_atari.py flags]}"
shift
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
source "$(dirname "$0")/device_env.sh"
# The hard timeout leaves the final evaluation a minute and a half after the training limit.
timeout "$(( ${TIME_LIMIT:-420} + ${EVAL_GRACE:-90} ))" "$PY" -u experiments/train_atari.py \
  --preset=pong_gpu --workdir="$OUT/run" --noprogress --time_limit="${TIME_LIMIT:-420}" "$@" 2>&1 \
  | grep -v "^WARNING\|^I0000\|^W0000" | tee "$OUT/train.log"
rc=${PIPESTATUS[0]}
echo "gpu_atari: train_atari.py exit $rc"
exit "$rc"
