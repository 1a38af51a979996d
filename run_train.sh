#!/usr/bin/env bash
# Stage 1: train the CAM network (MCL losses + PL-Mix). Released style: variables on top,
# one call below. Runs as it is on the built-in toy data (make toy); set CONFIG for VOC.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=configs/toy.yaml          # configs/voc12_effb3.yaml | voc12_resnet50.yaml | voc12_resnet38.yaml
VOC12_ROOT=data/toy_voc          # VOC: the devkit's VOC2012/ folder
SESSION=runs/toy                 # checkpoints, train.log, metrics.csv
BACKBONE_WEIGHTS=None            # ImageNet checkpoint for the VOC configs (local file)
DEVICE=auto
PY=${PY:-.venv/bin/python}

[ -d "$VOC12_ROOT" ] || "$PY" -m data.toy_voc --out "$VOC12_ROOT" --seed 0

"$PY" train_mcl.py --config "$CONFIG" --voc12_root "$VOC12_ROOT" --session_name "$SESSION" \
    --backbone_weights "$BACKBONE_WEIGHTS" --device "$DEVICE" --crf True --mix_loss focal \
    --Random_order True "$@"
