#!/usr/bin/env bash
# Stage 2: refine the stage-1 CAMs into pseudo labels with IRN (METHOD.md 13): the CAM dicts of
# train_list (train_aug on VOC), IR labels from them, IRN training, the random walk over IRN's
# edge map on infer_list, then the mIoU of the pseudo-label PNGs against the GT masks. CONFIG is
# the one switch, as in run_train.sh; runs as it is after run_train.sh and run_infer.sh (whose
# CAM dicts of infer_list the walk refines). Every step resumes: rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")"

# CONFIG (edit here, or CONFIG=... ./run_refine.sh): configs/voc12_effb3.yaml for the released VOC run
CONFIG=${CONFIG:-configs/toy.yaml}
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}                # processes on this machine (torchrun; one per GPU); 1 = plain

source tool/launcher.sh          # RUN: "$PY", or torchrun when NPROC > 1
eval "$("$PY" -m tool.common.config --config "$CONFIG" "$@" --get session_name voc12_root \
    train_list infer_list gt sem_seg_out_dir device threads allow_pickle num_classes)"
CAM_TRAIN=${CAM_TRAIN:-$SESSION_NAME/infer_train/npy_sgc}  # CAMs of train_list (IR labels)
CAM_DIR=${CAM_DIR:-$SESSION_NAME/infer/npy_sgc}            # CAMs of infer_list (run_infer.sh)

# stage-1 inference on the IRN training list: only the stage-2 flags among "$@" concern the
# steps below, so it gets the resolved values it shares with them
"${RUN[@]}" infer_cam.py --config "$CONFIG" --weights "$SESSION_NAME/best.ckpt" \
    --session_name "$SESSION_NAME" --voc12_root "$VOC12_ROOT" --num_classes "$NUM_CLASSES" \
    --infer_list "$TRAIN_LIST" --device "$DEVICE" --threads "$THREADS" \
    --allow_pickle "$ALLOW_PICKLE" \
    --out_npy "$CAM_TRAIN" --out_cam_npy None --out_png None --out_vis None --crf False
"$PY" make_ir_labels.py --config "$CONFIG" --cam_dir "$CAM_TRAIN" "$@"
"${RUN[@]}" train_irn.py --config "$CONFIG" --cam_dir "$CAM_TRAIN" "$@"
"${RUN[@]}" infer_irn.py --config "$CONFIG" --cam_dir "$CAM_DIR" "$@"
"$PY" eval_cam.py --type png --list "$INFER_LIST" --predict_dir "${SEM_SEG_OUT_DIR}_png" \
    --gt_dir "$GT" --logfile "$SEM_SEG_OUT_DIR.eval.log" --num_classes "$NUM_CLASSES"
