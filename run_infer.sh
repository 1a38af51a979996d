#!/usr/bin/env bash
# Stage 1 outputs: multi-scale CAM inference (SGC npy hand-off, label PNGs, overlays), then
# the mIoU of the npy files. Runs as it is after run_train.sh on the toy data.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=configs/toy.yaml
VOC12_ROOT=data/toy_voc
SESSION=runs/toy
WEIGHTS=$SESSION/best.ckpt
INFER_LIST=$VOC12_ROOT/ImageSets/Segmentation/train.txt   # VOC: train.txt (1,464 images)
OUT=$SESSION/infer
CRF=False                        # True: CRF-refined label PNGs (pseudo labels for segmentation)
PY=${PY:-.venv/bin/python}

"$PY" infer_cam.py --config "$CONFIG" --voc12_root "$VOC12_ROOT" --weights "$WEIGHTS" \
    --infer_list "$INFER_LIST" --out_npy "$OUT/npy_sgc" --out_cam_npy "$OUT/npy_cam" \
    --out_png "$OUT/png" --out_vis "$OUT/vis" --crf "$CRF" "$@"
"$PY" eval_cam.py --list "$INFER_LIST" --predict_dir "$OUT/npy_sgc" \
    --gt_dir "$VOC12_ROOT/SegmentationClass" --type npy --curve \
    --json "$OUT/eval.json" --plot "$OUT/curve.png"
