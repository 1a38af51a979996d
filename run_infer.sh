#!/usr/bin/env bash
# Stage 1 outputs: multi-scale CAM inference with <session_name>/best.ckpt (SGC npy hand-off,
# raw CAM npy, label PNGs, overlays), then the mIoU of the npy files against the GT masks.
# CONFIG is the one switch, as in run_train.sh; runs as it is after run_train.sh.
set -euo pipefail
cd "$(dirname "$0")"

# CONFIG (edit here, or CONFIG=... ./run_infer.sh): configs/voc12_effb3.yaml for the released VOC run
CONFIG=${CONFIG:-configs/toy.yaml}
CRF=False                        # True: CRF-refined label PNGs (pseudo labels for segmentation)
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}                # processes on this machine (torchrun; one per GPU); 1 = plain

source tool/launcher.sh          # RUN: "$PY", or torchrun when NPROC > 1
eval "$("$PY" -m tool.common.config --config "$CONFIG" "$@" --get session_name infer_list gt num_classes)"
OUT=$SESSION_NAME/infer

"${RUN[@]}" infer_cam.py --config "$CONFIG" --weights "$SESSION_NAME/best.ckpt" \
    --out_npy "$OUT/npy_sgc" --out_cam_npy "$OUT/npy_cam" --out_png "$OUT/png" \
    --out_vis "$OUT/vis" --crf "$CRF" "$@"
"$PY" eval_cam.py --list "$INFER_LIST" --predict_dir "$OUT/npy_sgc" --gt_dir "$GT" \
    --type npy --curve --json "$OUT/eval.json" --plot "$OUT/curve.png" --num_classes "$NUM_CLASSES"
