"""The toy demo (``make demo``): train on the toy train_aug split, infer and evaluate on the
held-out toy ``val`` split, and compare with the untrained network evaluated the same way; then
stage 2 (``tool.dev.demo_refine``): IRN trained on the toy's own CAMs refines the val CAMs into
pseudo labels, whose mIoU is printed beside the CAM mIoU of the same images.

Everything lands in ``runs/demo/``; the last lines printed are the two mIoUs. Rerunning
resumes an interrupted training run and skips the inference outputs finished with the same
checkpoint (those of another one are replaced).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from data.voc import load_img_name_list
from tool.common.checkpoint import load_checkpoint, save_checkpoint
from tool.common.config import (
    INFER_SECTIONS,
    TRAIN_SECTIONS,
    load_config,
    parse_overrides,
    resolve_config,
)
from tool.common.errors import cli_main
from tool.common.fileio import save_text
from tool.dev.demo_refine import refine
from tool.dev.demo_seg import segment

ROOT = Path(__file__).resolve().parents[2]


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def train(cfg: str, out: Path, voc: str, overrides: dict[str, Any] | None = None,
          overwrite: bool = False) -> dict:
    """Train ``cfg`` (with config ``overrides``) into ``out``, continuing its last.ckpt if any
    (what ``train_mcl.py ... --resume`` does); ``overwrite`` starts over instead."""
    from tool.cam import train as training

    resume = not overwrite and (out / "last.ckpt").exists()
    args = resolve_config(cfg, TRAIN_SECTIONS,
                          {"session_name": str(out), "voc12_root": voc, **(overrides or {})},
                          attrs={"resume": resume, "overwrite": overwrite,
                                 "resume_command": "the same demo command (it resumes)"})
    return training.run(args)


def save_untrained(cfg: str, out: Path, voc: str) -> Path:
    """The randomly initialised network of the same seed, as a checkpoint for inference."""
    import torch

    from tool.cam.build import build_model

    path = out / "untrained.ckpt"
    if not path.exists():
        args = resolve_config(cfg, TRAIN_SECTIONS, {"voc12_root": voc})
        torch.manual_seed(args.seed)
        model = build_model(args, device="cpu")
        save_checkpoint(path, {"model": model.state_dict(), "camT": args.camT})
    return path


def infer_and_eval(cfg: str, voc: str, weights: Path, folder: Path, val_list: str,
                   gt: str, t: float | None, vis: bool) -> dict:
    """Infer the val split with ``weights`` into ``folder`` and evaluate it: the curve
    (eval.json, curve.png, eval.log) and, when ``t`` is given, the mIoU at ``t``."""
    from tool.cam import infer
    from tool.eval import evaluation as ev
    from tool.eval import report

    npy = folder / "npy_sgc"
    args = resolve_config(cfg, INFER_SECTIONS, {
        "voc12_root": voc, "weights": weights, "infer_list": val_list, "out_npy": npy,
        "out_png": folder / "png" if vis else None, "out_vis": folder / "vis" if vis else None,
        "crf": False}, attrs={"replace_stale": True})
    # at the checkpoint's camT (METHOD.md 6 step 1); outputs of an earlier best.ckpt (training
    # continued since) are replaced, those of the same one kept
    infer.run_checkpoint(args)
    names = load_img_name_list(val_list)
    workers = ev.default_num_workers()
    curve = ev.evaluate(names, npy, gt, "npy", ev.parse_t_range(ev.DEFAULT_T_RANGE), workers,
                        num_classes=args.num_classes)
    report.save_result(curve, folder / "eval.json", folder / "curve.png", folder / "eval.log",
                       f"demo {folder.name}",
                       {"list": val_list, "predict_dir": str(npy), "gt_dir": gt, "type": "npy",
                        "t_range": ev.DEFAULT_T_RANGE})
    print("\n".join(report.printed_lines(curve)))
    if t is None:
        return {"t": curve.best_t, "miou": curve.best_miou, "curve": curve.to_json()}
    at_t = ev.evaluate(names, npy, gt, "npy", [t], workers, num_classes=args.num_classes)
    print("\n".join(report.printed_lines(at_t)))
    return {"t": t, "miou": at_t.best_miou, "curve": curve.to_json()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/toy.yaml")
    p.add_argument("--voc12_root", default="data/toy_voc")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--overwrite", action="store_true",
                   help="start the training run in --out over instead of continuing it "
                        "(inference outputs of another checkpoint are replaced)")
    a, extra = p.parse_known_args(argv)  # the rest: config flags (--max_epoches 1)
    overrides = parse_overrides(extra, [*TRAIN_SECTIONS, "irn", "seg"], a.config,
                                "config flags")
    cfg_dict = load_config(a.config)
    stage2 = {k: v for k, v in overrides.items() if k in cfg_dict["irn"]}
    stage3 = {k: v for k, v in overrides.items() if k in cfg_dict["seg"]}
    overrides = {k: v for k, v in overrides.items() if k not in {**stage2, **stage3}}
    t0 = time.time()
    out = Path(a.out)
    train_epochs = overrides.get("max_epoches", cfg_dict["train"]["max_epoches"])
    val_list = str(Path(a.voc12_root) / "ImageSets/Segmentation/val.txt")
    gt = str(Path(a.voc12_root) / "SegmentationClass")
    print(f"== [1/5] training {a.config} on {a.voc12_root} -> {out}", flush=True)
    train(a.config, out, a.voc12_root, overrides, a.overwrite)
    best = out / "best.ckpt" if (out / "best.ckpt").exists() else out / "last.ckpt"
    camT = float(load_checkpoint(best)["camT"])
    print(f"== [2/5] inference + evaluation of {best.name} on the held-out val split", flush=True)
    trained = infer_and_eval(a.config, a.voc12_root, best, out, val_list, gt, camT, vis=True)
    print("== [3/5] the untrained network, evaluated the same way", flush=True)
    untrained = infer_and_eval(a.config, a.voc12_root, save_untrained(a.config, out, a.voc12_root),
                               out / "untrained", val_list, gt, None, vis=False)
    print("== [4/5] stage 2: IRN refines the CAMs into pseudo labels", flush=True)
    refined = refine(a.config, a.voc12_root, out, best, out / "npy_sgc", val_list, gt,
                     stage2)
    print("== [5/5] stage 3: a segmentation network trained on the pseudo labels", flush=True)
    seg = segment(a.config, a.voc12_root, out, best, refined, val_list, gt, stage3)
    summary = {"val_miou_trained": round(trained["miou"], 2),
               "val_miou_pseudo_label": round(refined["miou"], 2),
               "val_miou_segmentation": round(seg["miou"], 2),
               "pseudo_label_dir": _rel(refined["dir"]), "stage2_seconds": refined["seconds"],
               "segmentation_dir": _rel(seg["dir"]), "stage3_seconds": seg["seconds"],
               "val_miou_untrained": round(untrained["miou"], 2),
               "threshold": round(camT, 4), "untrained_threshold": untrained["t"],
               "seconds": round(time.time() - t0, 1), "npy_dir": _rel(out / "npy_sgc"),
               "list": _rel(Path(val_list)), "gt_dir": _rel(Path(gt)),
               "config": a.config, "epochs": train_epochs}
    save_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\nPL-Mix toy demo finished in {summary['seconds']:.0f} s; outputs in {_rel(out)}/ "
          f"(summary.json, metrics.csv, npy_sgc/, png/, vis/, eval.json, curve.png, refine/, seg/)")
    print(f"held-out toy val CAM mIoU, untrained network (best t={untrained['t']:.2f}): "
          f"{untrained['miou']:.2f}%")
    print(f"held-out toy val CAM mIoU, trained network (t={camT:.2f} chosen on train): "
          f"{trained['miou']:.2f}%")
    print(f"held-out toy val pseudo-label mIoU, IRN random walk over the same CAMs: "
          f"{refined['miou']:.2f}%")
    print(f"held-out toy val segmentation mIoU, network trained on train_aug's pseudo labels: "
          f"{seg['miou']:.2f}%")
    print(f"held-out toy val mIoU: CAM {trained['miou']:.2f} | pseudo label "
          f"{refined['miou']:.2f} | segmentation {seg['miou']:.2f}")
    return summary


if __name__ == "__main__":
    cli_main(main)
