"""Toy ablation (``make ablation``): the MCL baseline (mix branch off) against MCL + PL-Mix, in two
regimes, for several seeds, each evaluated on the held-out toy ``val`` split at its own selected
threshold, with a paired test per seed (tool/eval/paired.py).

Regimes: ``scratch`` (configs/toy.yaml: a small ResNet from random initialisation at 30x the
released learning rate) and ``pretrained`` (configs/toy_pretrained.yaml: an ImageNet-pretrained
EfficientNet-Lite0 at a learning rate of the released order, on the released schedule's shape).

Writes ``runs/ablation/ablation.md`` (per regime: a row per seed with both mIoUs, the
difference, its bootstrap 95% interval and the paired t-test p-value; mean and std),
``ablation.json`` and ``ablation.png``. Every run lives in its own folder and resumes, so an
interrupted ablation continues.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from data.voc import load_img_name_list
from tool.common.checkpoint import load_checkpoint
from tool.common.config import load_config
from tool.common.errors import UserError, cli_main
from tool.common.fileio import atomic_save, save_text
from tool.dev.demo import infer_and_eval, train
from tool.eval import paired

VARIANTS = (("MCL", False), ("MCL+PL-Mix", True))  # (name, plmix)
REGIMES = {"scratch": "configs/toy.yaml", "pretrained": "configs/toy_pretrained.yaml"}


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant.replace('+', '_')}_seed{seed}"


def shared_prefix(config: str, voc: str, out: Path, seed: int) -> None:
    """Train the epochs before the mix branch once and start both variants from them.

    Up to ``mix_start`` the two variants are the same computation (every draw is seeded by
    (seed, epoch)), so the PL-Mix run resumes from the baseline's checkpoint at that epoch.
    """
    mix_start = load_config(config)["schedule"]["mix_start"]
    base, mix = (run_dir(out, v, seed) for v, _ in VARIANTS)
    if mix_start <= 0 or (mix / "last.ckpt").exists():
        return
    if not (base / "last.ckpt").exists() or \
            load_checkpoint(base / "last.ckpt")["epoch"] < mix_start - 1:
        train(config, base, voc, {"plmix": False, "seed": seed, "max_epoches": mix_start})
    mix.mkdir(parents=True, exist_ok=True)
    # the PL-Mix folder starts as a straight run's folder at that epoch: best.ckpt too (the
    # best epoch last.ckpt records), then last.ckpt, which marks the fork as done
    if (base / "best.ckpt").exists():
        shutil.copyfile(base / "best.ckpt", mix / "best.ckpt")
    shutil.copyfile(base / "last.ckpt", mix / "last.ckpt")


def run_one(config: str, voc: str, val_list: str, out: Path, variant: str, plmix: bool,
            seed: int) -> dict:
    """Train one (variant, seed), infer + evaluate val at its selected camT."""
    folder = run_dir(out, variant, seed)
    train(config, folder, voc, {"plmix": plmix, "seed": seed})
    best = folder / "best.ckpt" if (folder / "best.ckpt").exists() else folder / "last.ckpt"
    camT = float(load_checkpoint(best)["camT"])
    res = infer_and_eval(config, voc, best, folder, val_list,
                         str(Path(voc) / "SegmentationClass"), camT, vis=False)
    return {"miou": float(res["miou"]), "t": camT, "npy": folder / "npy_sgc"}


def run_regime(config: str, voc: str, val_list: str, out: Path, seeds: list[int]) -> dict:
    """Both variants for every seed, and the paired comparison PL-Mix vs MCL per seed."""
    for s in seeds:
        shared_prefix(config, voc, out, s)
    runs = {name: [run_one(config, voc, val_list, out, name, flag, s) for s in seeds]
            for name, flag in VARIANTS}
    names = load_img_name_list(val_list)
    tests = [paired.compare_folders(names, mix["npy"], mcl["npy"],
                                    str(Path(voc) / "SegmentationClass"), "npy",
                                    t_a=mix["t"], t_b=mcl["t"], num_workers=0).to_json()
             for mcl, mix in zip(runs["MCL"], runs["MCL+PL-Mix"])]
    return {"config": config, "seeds": seeds,
            **{name: [r["miou"] for r in rs] for name, rs in runs.items()},
            "paired": tests}


def _std(v: list[float]) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def table(res: dict) -> str:
    """Markdown table of one regime: per seed both mIoUs and the paired PL-Mix - MCL test."""
    names = [v for v, _ in VARIANTS]
    lines = ["| seed | " + " | ".join(f"{n} mIoU (%)" for n in names)
             + " | PL-Mix - MCL (pp) | 95% CI (bootstrap) | p (paired t) |",
             "|---|" + "---:|" * (len(names) + 3)]
    for i, s in enumerate(res["seeds"]):
        p = res["paired"][i]
        lo, hi = p["ci95"]
        pv = "n/a" if p["p_value"] is None else f"{p['p_value']:.3g}"
        lines.append(f"| {s} | " + " | ".join(f"{res[n][i]:.2f}" for n in names)
                     + f" | {p['miou_a'] - p['miou_b']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {pv} |")
    diffs = [a - b for a, b in zip(res["MCL+PL-Mix"], res["MCL"])]
    lines.append("| mean ± std | " + " | ".join(
        f"{np.mean(res[n]):.2f} ± {_std(res[n]):.2f}" for n in names)
        + f" | {np.mean(diffs):+.2f} ± {_std(diffs):.2f} | | |")
    return "\n".join(lines)


def bar_chart(path: Path, results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.5), squeeze=False)
    for ax, (regime, res) in zip(axes[0], results.items()):
        seeds = res["seeds"]
        x = np.arange(len(seeds) + 1)
        for k, (name, _) in enumerate(VARIANTS):
            vals = res[name] + [float(np.mean(res[name]))]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=name)
        ax.set_xticks(x, [f"seed {s}" for s in seeds] + ["mean"])
        ax.set_title(regime)
        ax.set_ylabel("held-out toy val CAM mIoU (%)")
        ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def report(results: dict[str, dict], val_list: str, minutes: float) -> str:
    md = [f"# Toy ablation: MCL vs MCL + PL-Mix\n\nHeld-out split `{val_list}`, threshold "
          f"selected on `train` during training, {minutes:.0f} min in all. Per seed: the mIoU "
          "difference PL-Mix - MCL, its bootstrap 95% interval (images resampled) and the "
          "paired t-test p-value over per-image scores (`eval_cam.py --compare`).\n"]
    for regime, res in results.items():
        md.append(f"## {regime} (`{res['config']}`)\n\n{table(res)}\n")
    return "\n".join(md)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regimes", default=",".join(REGIMES),
                   help=f"comma-separated, from {', '.join(REGIMES)}")
    p.add_argument("--config", default=None,
                   help="run one regime with this config instead (named after the file)")
    p.add_argument("--voc12_root", default="data/toy_voc")
    p.add_argument("--val_list", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/ablation")
    a = p.parse_args(argv)
    if a.config:
        configs = {Path(a.config).stem: a.config}
    else:
        unknown = [r for r in a.regimes.split(",") if r not in REGIMES]
        if unknown:
            raise UserError(f"--regimes: unknown {', '.join(unknown)}; choose from "
                            f"{', '.join(REGIMES)}")
        configs = {r: REGIMES[r] for r in a.regimes.split(",")}
    seeds = [int(s) for s in a.seeds.split(",")]
    val_list = str(Path(a.voc12_root) / a.val_list)
    t0 = time.time()
    out = Path(a.out)
    results = {regime: run_regime(cfg, a.voc12_root, val_list, out / regime, seeds)
               for regime, cfg in configs.items()}
    md = report(results, val_list, (time.time() - t0) / 60)
    save_text(out / "ablation.md", md)
    save_text(out / "ablation.json", json.dumps(results, indent=2) + "\n")
    bar_chart(out / "ablation.png", results)
    print(md)
    return results


if __name__ == "__main__":
    cli_main(main)
