"""The toy demo's stage 3 (``make demo``, after stage 2): the IRN random walk over the toy
``train_aug`` CAMs into pseudo labels, a toy segmentation network trained on them (its trunk
from the stage-1 network), and its multi-scale + CRF predictions on the held-out ``val`` split
(METHOD.md 14).

Everything lands in ``<out>/seg/``. A rerun continues where it stopped (every step resumes);
an IRN checkpoint other than the one the folder was made from starts it over.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data.voc import load_img_name_list
from tool.common.config import SEG_SECTIONS, resolve_config
from tool.dev.demo_refine import fresh_folder
from tool.irn.presets import IRN_SECTIONS


def segment(cfg: str, voc: str, out: Path, stage1: Path, refine: dict[str, Any],
            val_list: str, gt: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 3 of the demo: returns {"miou": segmentation mIoU on ``val_list``, "dir": the
    prediction folder, "seconds" per step}. ``refine``: what stage 2 returned (its IRN
    checkpoint, CAM folder and training list); ``overrides``: ``seg`` config keys."""
    from tool.eval import evaluation as ev
    from tool.irn import infer as irn_infer
    from tool.seg import infer as seg_infer
    from tool.seg import train as seg_train

    folder = out / "seg"
    fresh_folder(folder, Path(refine["irn"]))
    seconds: dict[str, float] = {}
    t = time.time()
    pseudo = folder / "sem_seg_train"
    print(f"   pseudo labels of {refine['train_list']} -> {pseudo}_png", flush=True)
    irn_infer.run(resolve_config(cfg, IRN_SECTIONS, {
        "session_name": str(folder), "voc12_root": voc, "cam_dir": str(refine["cams"]),
        "infer_list": refine["train_list"], "irn_weights_name": str(refine["irn"]),
        "sem_seg_out_dir": str(pseudo)}))
    seconds["pseudo_labels"] = round(time.time() - t, 1)
    t = time.time()
    common = {"session_name": str(folder), "voc12_root": voc, "seg_infer_list": val_list,
              **(overrides or {})}
    session = folder / "seg"
    print(f"   segmentation training -> {session}", flush=True)
    seg_train.run(resolve_config(cfg, SEG_SECTIONS, {
        **common, "mask_root": f"{pseudo}_png", "mask_type": "png",
        "seg_init_from_cam": str(stage1)},
        attrs={"resume": (session / "last.ckpt").is_file(), "overwrite": False,
               "resume_command": "the same demo command (it resumes)"}))
    seconds["training"] = round(time.time() - t, 1)
    t = time.time()
    infer_args = resolve_config(cfg, SEG_SECTIONS, common)
    print(f"   multi-scale + CRF inference on {val_list} -> {infer_args.out_seg}", flush=True)
    seg_infer.run(infer_args)
    result = ev.evaluate(load_img_name_list(val_list), infer_args.out_seg, gt, "png",
                         num_classes=infer_args.num_classes)
    seconds["inference_and_eval"] = round(time.time() - t, 1)
    return {"miou": result.best_miou, "dir": Path(infer_args.out_seg), "seconds": seconds}
