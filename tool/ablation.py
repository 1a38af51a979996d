"""Toy ablation (``make ablation``): the MCL baseline (mix branch off) against MCL + PL-Mix, for
several seeds, each evaluated on the held-out toy ``val`` split at its own selected threshold.

Writes ``runs/ablation/ablation.md`` (table, mean and std) and ``ablation.png`` (bar chart).
Every run lives in its own folder and resumes, so an interrupted ablation continues.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tool.checkpoint import load_checkpoint
from tool.config import load_config
from tool.demo import infer_and_eval, train
from tool.errors import cli_main
from tool.fileio import atomic_save, save_text

VARIANTS = (("MCL", "False"), ("MCL+PL-Mix", "True"))


def run_dir(a: argparse.Namespace, variant: str, seed: int) -> Path:
    return Path(a.out) / f"{variant.replace('+', '_')}_seed{seed}"


def shared_prefix(a: argparse.Namespace, seed: int) -> None:
    """Train the epochs before the mix branch once and start both variants from them.

    Up to ``mix_start`` the two variants are the same computation (every draw is seeded by
    (seed, epoch)), so the PL-Mix run resumes from the baseline's checkpoint at that epoch.
    """
    mix_start = load_config(a.config)["schedule"]["mix_start"]
    base, mix = (run_dir(a, v, seed) for v, _ in VARIANTS)
    if mix_start <= 0 or (mix / "last.ckpt").exists():
        return
    if not (base / "last.ckpt").exists() or \
            load_checkpoint(base / "last.ckpt")["epoch"] < mix_start - 1:
        train(a.config, base, a.voc12_root,
              ["--plmix", "False", "--seed", str(seed), "--max_epoches", str(mix_start)])
    mix.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base / "last.ckpt", mix / "last.ckpt")


def run_one(a: argparse.Namespace, variant: str, plmix: str, seed: int) -> float:
    """Train one (variant, seed), infer + evaluate val at its selected camT; mIoU in percent."""
    out = run_dir(a, variant, seed)
    train(a.config, out, a.voc12_root, ["--plmix", plmix, "--seed", str(seed)])
    best = out / "best.ckpt" if (out / "best.ckpt").exists() else out / "last.ckpt"
    camT = float(load_checkpoint(best)["camT"])
    voc = Path(a.voc12_root)
    res = infer_and_eval(a.config, a.voc12_root, best, out, str(voc / a.val_list),
                         str(voc / "SegmentationClass"), camT, vis=False)
    return float(res["miou"])


def table(seeds: list[int], res: dict[str, list[float]]) -> str:
    names = [v for v, _ in VARIANTS]
    lines = ["| seed | " + " | ".join(f"{n} mIoU (%)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {s} | " + " | ".join(f"{res[n][i]:.2f}" for n in names) + " |"
              for i, s in enumerate(seeds)]
    lines.append("| mean ± std | " + " | ".join(
        f"{np.mean(res[n]):.2f} ± {np.std(res[n], ddof=1) if len(seeds) > 1 else 0:.2f}"
        for n in names) + " |")
    return "\n".join(lines)


def bar_chart(path: Path, seeds: list[int], res: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(seeds) + 1)
    for k, (name, _) in enumerate(VARIANTS):
        vals = res[name] + [float(np.mean(res[name]))]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=name)
    ax.set_xticks(x, [f"seed {s}" for s in seeds] + ["mean"])
    ax.set_ylabel("held-out toy val CAM mIoU (%)")
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/toy.yaml")
    p.add_argument("--voc12_root", default="data/toy_voc")
    p.add_argument("--val_list", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/ablation")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.time()
    for s in seeds:
        shared_prefix(a, s)
    res = {name: [run_one(a, name, flag, s) for s in seeds] for name, flag in VARIANTS}
    out = Path(a.out)
    minutes = (time.time() - t0) / 60
    md = (f"# Toy ablation: MCL vs MCL + PL-Mix\n\nConfig `{a.config}`, held-out split "
          f"`{a.val_list}`, threshold selected on `train` during training, {len(seeds)} seeds; "
          f"this run took {minutes:.0f} min.\n\n{table(seeds, res)}\n")
    save_text(out / "ablation.md", md)
    save_text(out / "ablation.json", json.dumps({"seeds": seeds, **res}, indent=2) + "\n")
    bar_chart(out / "ablation.png", seeds, res)
    print(md)
    return res


if __name__ == "__main__":
    cli_main(main)
