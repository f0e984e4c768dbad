#!/usr/bin/env bash
# Image-classification results in one go: offline data prep, then joint and
# continual training on MNIST + Fashion-MNIST with the context on and off, in
# the configuration of RESULTS.md's summary table: the presets mnist_fashion
# and mnist_fashion_continual of experiments/configs/images.py (the wider
# trunk 64:5:2,128:3:2, hidden 512, every data set evaluated with BatchNorm
# statistics of its own; continual: a rehearsed memory of 10k MNIST images,
# 25 % of later batches, and random shifts of MNIST only).
# Needs only the offline sources (scripts/get_offline_data.sh installs them;
# no TensorFlow). Each run writes results.md under OUT/<run>; the combined
# table goes to OUT/results.md.
#
# Usage: PYTHON=.venv/bin/python bash scripts/image_results.sh OUT [EPOCHS] [SEED] [extra train flags...]
set -euo pipefail
PYTHON="${PYTHON:-python}"
OUT="${1:?usage: image_results.sh OUT [EPOCHS] [SEED] [flags...]}"
EPOCHS="${2:-4}"
SEED="${3:-0}"
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_DIR="${DATA_DIR:-data/tfds}"
mkdir -p "$OUT"

PYTHON="$PYTHON" bash scripts/get_offline_data.sh "$DATA_DIR"

COMMON=(--epochs="$EPOCHS" --seed="$SEED" --data_dir="$DATA_DIR" --noprogress)
for protocol in joint continual; do
  preset=mnist_fashion
  [[ "$protocol" == continual ]] && preset=mnist_fashion_continual
  for ctx in use_context nouse_context; do
    run="${protocol}_${ctx}_s${SEED}"
    start=$(date +%s)
    "$PYTHON" experiments/train_images.py --workdir="$OUT/$run" --preset="$preset" --"$ctx" "${COMMON[@]}" \
      "$@" 2>&1 | tee "$OUT/$run.log"
    echo "$run: $(( $(date +%s) - start )) s" >> "$OUT/wall_times.txt"
  done
done

{
  echo "# Image classification (epochs per stage: $EPOCHS, seed: $SEED)"
  for run in joint_use_context joint_nouse_context continual_use_context continual_nouse_context; do
    echo; echo "## ${run}_s${SEED}"; echo; cat "$OUT/${run}_s${SEED}/results.md"
  done
  echo; echo '```'; cat "$OUT/wall_times.txt"; echo '```'
} > "$OUT/results.md"
cat "$OUT/results.md"
