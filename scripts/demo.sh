#!/usr/bin/env bash
# The README's demo: train a small class-conditional model on an offline dataset, sample a grid, export a set.
# Extra arguments are config overrides for training, e.g. `bash scripts/demo.sh training.max_steps=3000`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=runs/demo
export WANDB_MODE=${WANDB_MODE:-offline}

$PY train.py configs/experiment/demo.yaml training.resume=auto "$@"
$PY sample.py "$RUN/model.safetensors" --grid "$RUN/grid.png" --per-class 10
$PY sample.py "$RUN/model.safetensors" export.out_dir="$RUN/export"

echo
echo "demo finished:"
echo "  run directory      $RUN  (config.yaml, checkpoints/, samples/)"
echo "  EMA weights        $RUN/model.safetensors"
echo "  sample grid        $RUN/grid.png"
echo "  augmentation set   $RUN/export  (images/, shards/, manifest, dataset card)"
