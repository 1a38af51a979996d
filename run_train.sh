#!/usr/bin/env bash
# Stage 1: train the CAM network (MCL losses + PL-Mix). Released style: variables on top, one
# call below. CONFIG is the one switch: the toy config runs as it is (the toy data is made when
# missing); configs/voc12_effb3.yaml is the released VOC run (it also needs BACKBONE_WEIGHTS).
set -euo pipefail
cd "$(dirname "$0")"

# CONFIG (edit here, or CONFIG=... ./run_train.sh): configs/toy.yaml | voc12_effb3.yaml |
# voc12_resnet50.yaml | voc12_resnet38.yaml | coco14_effb3.yaml | coco14_resnet50.yaml | toy_coco.yaml
CONFIG=${CONFIG:-configs/toy.yaml}
BACKBONE_WEIGHTS=None            # VOC: the local ImageNet checkpoint named in README
DEVICE=auto
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}                # processes on this machine (torchrun; one per GPU); 1 = plain

source tool/launcher.sh          # RUN: "$PY", or torchrun when NPROC > 1
eval "$("$PY" -m tool.common.config --config "$CONFIG" --get voc12_root)"
case "$CONFIG" in  # the toy data is made when missing
    *toy_coco*) [ -d "$VOC12_ROOT" ] || { "$PY" -m data.toy_coco --out "${VOC12_ROOT}_src" --seed 0 &&
        "$PY" -m data.prepare_coco --coco_root "${VOC12_ROOT}_src" --out_dir "$VOC12_ROOT"; };;
    *toy*) [ -d "$VOC12_ROOT" ] || "$PY" -m data.toy_voc --out "$VOC12_ROOT" --seed 0;;
esac

"${RUN[@]}" train_mcl.py --config "$CONFIG" --backbone_weights "$BACKBONE_WEIGHTS" --device "$DEVICE" \
    --crf True --mix_loss focal --Random_order True "$@"
