"""The toy demo (``make demo``): train on the toy train_aug split, infer and evaluate on the
held-out toy ``val`` split, and compare with the untrained network evaluated the same way.

Everything lands in ``runs/demo/``; the last lines printed are the two mIoUs. Rerunning
resumes an interrupted training run and skips finished inference outputs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import eval_cam
import infer_cam
import train_mcl
from tool.common.checkpoint import load_checkpoint, save_checkpoint
from tool.common.config import load_config, parse_config_args
from tool.common.errors import cli_main
from tool.common.fileio import save_text

ROOT = Path(__file__).resolve().parents[2]


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def train(cfg: str, out: Path, voc: str, extra: list[str]) -> None:
    args = ["--config", cfg, "--session_name", str(out), "--voc12_root", voc, *extra]
    if (out / "last.ckpt").exists():
        args.append("--resume")
    train_mcl.main(args)


def save_untrained(cfg: str, out: Path, voc: str) -> Path:
    """The randomly initialised network of the same seed, as a checkpoint for inference."""
    import torch

    from tool.cam.build import build_model

    path = out / "untrained.ckpt"
    if not path.exists():
        args = parse_config_args(["--config", cfg, "--voc12_root", voc],
                                 train_mcl.SECTIONS, "", cfg)
        torch.manual_seed(args.seed)
        model = build_model(args, device="cpu")
        save_checkpoint(path, {"model": model.state_dict(), "camT": args.camT})
    return path


def infer_and_eval(cfg: str, voc: str, weights: Path, folder: Path, val_list: str,
                   gt: str, t: float | None, vis: bool) -> dict:
    """Infer the val split with ``weights`` into ``folder`` and evaluate it (curve + t)."""
    argv = ["--config", cfg, "--voc12_root", voc, "--weights", str(weights),
            "--infer_list", val_list, "--out_npy", str(folder / "npy_sgc"),
            "--out_png", str(folder / "png") if vis else "None",
            "--out_vis", str(folder / "vis") if vis else "None", "--crf", "False"]
    infer_cam.main(argv)
    ev = ["--list", val_list, "--predict_dir", str(folder / "npy_sgc"), "--gt_dir", gt,
          "--type", "npy", "--curve", "--json", str(folder / "eval.json"),
          "--plot", str(folder / "curve.png"), "--comment", f"demo {folder.name}",
          "--logfile", str(folder / "eval.log")]
    eval_cam.main(ev)
    curve = json.loads((folder / "eval.json").read_text())
    if t is None:
        return {"t": curve["best"]["t"], "miou": curve["best"]["miou"], "curve": curve}
    at_t = eval_cam.main(ev[:8] + ["--t", repr(t)])
    return {"t": t, "miou": at_t.best_miou, "curve": curve}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/toy.yaml")
    p.add_argument("--voc12_root", default="data/toy_voc")
    p.add_argument("--out", default="runs/demo")
    a, extra = p.parse_known_args(argv)
    t0 = time.time()
    out = Path(a.out)
    cfg = load_config(a.config)
    val_list = str(Path(a.voc12_root) / "ImageSets/Segmentation/val.txt")
    gt = str(Path(a.voc12_root) / "SegmentationClass")
    print(f"== [1/3] training {a.config} on {a.voc12_root} -> {out}", flush=True)
    train(a.config, out, a.voc12_root, extra)
    best = out / "best.ckpt" if (out / "best.ckpt").exists() else out / "last.ckpt"
    camT = float(load_checkpoint(best)["camT"])
    print(f"== [2/3] inference + evaluation of {best.name} on the held-out val split", flush=True)
    trained = infer_and_eval(a.config, a.voc12_root, best, out, val_list, gt, camT, vis=True)
    print("== [3/3] the untrained network, evaluated the same way", flush=True)
    untrained = infer_and_eval(a.config, a.voc12_root, save_untrained(a.config, out, a.voc12_root),
                               out / "untrained", val_list, gt, None, vis=False)
    summary = {"val_miou_trained": round(trained["miou"], 2),
               "val_miou_untrained": round(untrained["miou"], 2),
               "threshold": round(camT, 4), "untrained_threshold": untrained["t"],
               "seconds": round(time.time() - t0, 1), "npy_dir": _rel(out / "npy_sgc"),
               "list": _rel(Path(val_list)), "gt_dir": _rel(Path(gt)),
               "config": a.config, "epochs": cfg["train"]["max_epoches"]}
    save_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\nPL-Mix toy demo finished in {summary['seconds']:.0f} s; outputs in {_rel(out)}/ "
          f"(summary.json, metrics.csv, npy_sgc/, png/, vis/, eval.json, curve.png)")
    print(f"held-out toy val CAM mIoU, untrained network (best t={untrained['t']:.2f}): "
          f"{untrained['miou']:.2f}%")
    print(f"held-out toy val CAM mIoU, trained network (t={camT:.2f} chosen on train): "
          f"{trained['miou']:.2f}%")
    return summary


if __name__ == "__main__":
    cli_main(main)
