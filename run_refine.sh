#!/usr/bin/env bash
# Stage 2: refine the stage-1 CAMs into pseudo labels with IRN (METHOD.md 13): IR labels from the
# CAM dicts, IRN training, the random walk over IRN's edge map, then the mIoU of the pseudo-label
# PNGs against the GT masks. CONFIG is the one switch, as in run_train.sh; runs as it is after
# run_train.sh and run_infer.sh. The IR labels and IRN training read the CAM dicts of train_list
# (train_aug on VOC): stage 1 must have written them for that list (METHOD.md 13.0).
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=configs/toy.yaml          # configs/voc12_effb3.yaml for the released VOC run
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}                # processes on this machine (torchrun; one per GPU); 1 = plain

source tool/launcher.sh          # RUN: "$PY", or torchrun when NPROC > 1
eval "$("$PY" -m tool.common.config --config "$CONFIG" "$@" \
    --get session_name infer_list gt sem_seg_out_dir)"
CAM_DIR=${CAM_DIR:-$SESSION_NAME/infer/npy_sgc}   # where run_infer.sh writes the hand-off

"$PY" make_ir_labels.py --config "$CONFIG" --cam_dir "$CAM_DIR" "$@"
"${RUN[@]}" train_irn.py --config "$CONFIG" "$@"
"${RUN[@]}" infer_irn.py --config "$CONFIG" --cam_dir "$CAM_DIR" "$@"
"$PY" eval_cam.py --type png --list "$INFER_LIST" --predict_dir "${SEM_SEG_OUT_DIR}_png" \
    --gt_dir "$GT" --logfile "$SEM_SEG_OUT_DIR.eval.log"
