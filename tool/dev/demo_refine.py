"""The toy demo's stage 2 (``make demo``, after stage 1): the stage-1 network's CAMs of toy
``train_aug``, IR labels, IRN (its frozen trunk initialised from the stage-1 network), and the
random walk over the CAMs of the held-out ``val`` split, evaluated against the CAM mIoU of the
same images (METHOD.md 13).

Everything lands in ``<out>/refine/``. A rerun continues where it stopped (every step
resumes); a stage-1 checkpoint other than the one the folder was made from starts it over.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from data.voc import load_img_name_list
from tool.common.config import INFER_SECTIONS, resolve_config
from tool.common.fileio import save_text
from tool.common.provenance import file_sha256
from tool.irn.presets import IRN_SECTIONS


def fresh_folder(folder: Path, source: Path) -> None:
    """Start ``folder`` over when it was made from another ``source`` (checkpoint)."""
    stamp = folder / "source.sha256"
    sha = file_sha256(source)
    if stamp.is_file() and stamp.read_text().strip() != sha:
        print(f"   {source} changed since {folder} was made: starting it over", flush=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_text(stamp, sha + "\n")


def refine(cfg: str, voc: str, out: Path, stage1: Path, cam_val: Path, val_list: str, gt: str,
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 2 of the demo: returns {"miou": pseudo-label mIoU on ``val_list``, "dir": the
    pseudo-label PNG folder, "seconds" per step, "irn": the IRN checkpoint, "cams": the CAM
    folder of "train_list"}. ``cam_val``: stage 1's CAM dicts of
    ``val_list`` (from ``stage1``); ``overrides``: ``irn`` config keys (``irn_num_epoches``)."""
    import time

    from tool.cam import infer
    from tool.eval import evaluation as ev
    from tool.irn import infer as irn_infer
    from tool.irn import train as irn_train

    folder = out / "refine"
    fresh_folder(folder, stage1)
    seconds: dict[str, float] = {}
    t = time.time()
    train_list = str(Path(voc) / "ImageSets/Segmentation/train_aug.txt")
    cam_train = folder / "cam_train_aug"
    print(f"   CAMs of {train_list} -> {cam_train}", flush=True)
    infer.run_checkpoint(resolve_config(cfg, INFER_SECTIONS, {
        "voc12_root": voc, "weights": str(stage1), "infer_list": train_list,
        "out_npy": str(cam_train), "out_png": None, "out_vis": None, "crf": False}))
    seconds["cams"] = round(time.time() - t, 1)
    t = time.time()
    common = {"session_name": str(folder), "voc12_root": voc, "train_list": train_list,
              **(overrides or {})}
    session = folder / "irn"
    train_args = resolve_config(cfg, IRN_SECTIONS, {
        **common, "cam_dir": str(cam_train), "irn_init_from_cam": str(stage1)},
        attrs={"resume": (session / "last.ckpt").is_file(), "overwrite": False,
               "resume_command": "the same demo command (it resumes)"})
    print(f"   IR labels and IRN training -> {session}", flush=True)
    irn_train.run(train_args)
    seconds["ir_labels_and_irn"] = round(time.time() - t, 1)
    t = time.time()
    walk_args = resolve_config(cfg, IRN_SECTIONS, {
        **common, "cam_dir": str(cam_val), "infer_list": val_list})
    print(f"   random walk on {val_list} -> {walk_args.sem_seg_out_dir}_png", flush=True)
    irn_infer.run(walk_args)
    pred = Path(f"{walk_args.sem_seg_out_dir}_png")
    result = ev.evaluate(load_img_name_list(val_list), pred, gt, "png",
                         num_classes=walk_args.num_classes)
    seconds["walk_and_eval"] = round(time.time() - t, 1)
    return {"miou": result.best_miou, "dir": pred, "seconds": seconds,
            "irn": session / "last.ckpt", "cams": cam_train, "train_list": train_list}
