#!/usr/bin/env bash
# Stage 3: segmentation on the stage-2 pseudo labels (METHOD.md 14): the random walk over the
# CAMs of train_list (train_aug) into pseudo labels (soft npy + PNG), segmentation training on
# them, multi-scale + CRF inference on seg_infer_list (VOC val), then its mIoU against the GT
# masks. CONFIG is the one switch, as in the other run scripts; runs as it is after
# run_refine.sh (its CAMs of train_list and its IRN). Every step resumes: rerun after a stop.
set -euo pipefail
cd "$(dirname "$0")"

# CONFIG (edit here, or CONFIG=... ./run_seg.sh): configs/voc12_effb3.yaml for the released VOC run
CONFIG=${CONFIG:-configs/toy.yaml}
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}                # processes on this machine (torchrun; one per GPU); 1 = plain

source tool/launcher.sh          # RUN: "$PY", or torchrun when NPROC > 1
eval "$("$PY" -m tool.common.config --config "$CONFIG" "$@" --get session_name voc12_root \
    train_list seg_infer_list gt mask_type out_seg device threads allow_pickle num_classes)"
CAM_TRAIN=${CAM_TRAIN:-$SESSION_NAME/infer_train/npy_sgc}  # run_refine.sh's CAMs of train_list
PSEUDO=${PSEUDO:-$SESSION_NAME/sem_seg_train}              # pseudo labels of train_list
MASK_ROOT=$PSEUDO; [ "$MASK_TYPE" = png ] && MASK_ROOT=${PSEUDO}_png

# stage 2's walk over train_list: only the stage-3 flags among "$@" concern the steps below,
# so it gets the resolved values it shares with them
"${RUN[@]}" infer_irn.py --config "$CONFIG" --session_name "$SESSION_NAME" \
    --voc12_root "$VOC12_ROOT" --num_classes "$NUM_CLASSES" --infer_list "$TRAIN_LIST" \
    --cam_dir "$CAM_TRAIN" --sem_seg_out_dir "$PSEUDO" --soft_output True --device "$DEVICE" \
    --threads "$THREADS" --allow_pickle "$ALLOW_PICKLE"
"${RUN[@]}" train_seg.py --config "$CONFIG" --mask_root "$MASK_ROOT" "$@"
"${RUN[@]}" infer_seg.py --config "$CONFIG" "$@"
"$PY" eval_cam.py --type png --list "$SEG_INFER_LIST" --predict_dir "$OUT_SEG" --gt_dir "$GT" \
    --logfile "$OUT_SEG.eval.log" --num_classes "$NUM_CLASSES"
