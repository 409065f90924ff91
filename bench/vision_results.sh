#!/usr/bin/env bash
# The vision results table (README "Vision", bench/README.md "Vision"): ViT, Swin and the CNN baseline, each
# trained 15 minutes on MNIST (11,000 images: the 5k CSV subset + test images 0-5,999), scored on test images
# 7,000-9,999; then the ViT-Base/16 inference benchmark against transformers. One at a time under the
# machine's measurement lock when there is one (LOCK=/work/notes/quiet.lock).
#
#   bash bench/vision_results.sh                     # everything (about 50 minutes)
#   MODELS="cnn" bash bench/vision_results.sh        # one model
#   STEP=bench bash bench/vision_results.sh          # only the benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/mnist}
RUNS=${RUNS:-runs}
QKV=${QKV:-.venv/bin/qkv}
THREADS=${THREADS:-1}               # one thread: on a 2-core machine shared with other jobs, two were slower
MODELS=${MODELS:-vit swin cnn}
STEP=${STEP:-all}
LOCK=${LOCK:-}
run() { if [ -n "$LOCK" ]; then flock "$LOCK" nice -n 5 "$@"; else "$@"; fi; }

if [ "$STEP" = all ] || [ "$STEP" = train ]; then
  for m in $MODELS; do
    run "$QKV" train --task image-classification --model "$m" --data "$DATA" --threads "$THREADS" --no-progress \
        --out-dir "$RUNS/mnist-$m" --overwrite
    "$QKV" evaluate "$RUNS/mnist-$m"
  done
fi
if [ "$STEP" = all ] || [ "$STEP" = bench ]; then
  run "$QKV" bench vision --json
fi
