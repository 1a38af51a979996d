"""The demo and the ablation run end to end on the tiny config and write what they promise."""
from __future__ import annotations

import json

import pytest

from tests.utils import read_metrics
from tool.common.checkpoint import load_checkpoint
from tool.dev import ablation, demo


@pytest.mark.slow
def test_demo_writes_summary_and_outputs(tiny_config, toy_voc, tmp_path, capsys):
    out = tmp_path / "demo"
    s = demo.main(["--config", str(tiny_config), "--voc12_root", str(toy_voc),
                   "--out", str(out), "--max_epoches", "1"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved == s
    assert {"val_miou_trained", "val_miou_untrained", "threshold", "seconds", "npy_dir", "list",
            "gt_dir"} <= set(s)
    assert 0 <= s["val_miou_untrained"] <= 100 and 0 <= s["val_miou_trained"] <= 100
    for f in ("metrics.csv", "last.ckpt", "eval.json", "curve.png", "untrained/eval.json",
              "refine/irn/last.ckpt", "refine/irn/train.log"):
        assert (out / f).exists(), f
    names = (toy_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    for sub in ("npy_sgc", "png", "vis"):  # one output per image, beside the settings record
        files = sorted(p.name for p in (out / sub).iterdir())
        assert files[0] == ".provenance.json" and [f[:-4] for f in files[1:]] == sorted(names)
    # stage 2: CAMs and IR labels of train_aug, pseudo labels of val
    train_aug = (toy_voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    for sub, ext in (("refine/cam_train_aug", ".npy"), ("refine/ir_label", ".png")):
        assert sorted(p.stem for p in (out / sub).glob(f"*{ext}")) == sorted(train_aug), sub
    assert sorted(p.stem for p in (out / "refine/sem_seg_png").glob("*.png")) == sorted(names)
    assert 0 <= s["val_miou_pseudo_label"] <= 100
    assert s["pseudo_label_dir"].endswith("refine/sem_seg_png") and s["epochs"] == 1
    # stage 3: pseudo labels of train_aug, a segmentation network, predictions of val
    assert sorted(p.stem for p in (out / "seg/sem_seg_train_png").glob("*.png")) == \
        sorted(train_aug)
    assert sorted(p.stem for p in (out / "seg/seg/pred").glob("*.png")) == sorted(names)
    assert 0 <= s["val_miou_segmentation"] <= 100 and (out / "seg/seg/last.ckpt").is_file()
    last = capsys.readouterr().out.strip().splitlines()
    assert last[-1] == (f"held-out toy val mIoU: CAM {s['val_miou_trained']:.2f} | pseudo "
                        f"label {s['val_miou_pseudo_label']:.2f} | segmentation "
                        f"{s['val_miou_segmentation']:.2f}")
    assert "segmentation" in last[-2] and "pseudo-label" in last[-3]
    assert "trained network" in last[-4] and "untrained network" in last[-5]
    # a rerun resumes every step: nothing is trained or written again
    mtime = (out / "refine/irn/last.ckpt").stat().st_mtime_ns
    again = demo.main(["--config", str(tiny_config), "--voc12_root", str(toy_voc),
                       "--out", str(out), "--max_epoches", "1"])
    assert again["val_miou_pseudo_label"] == s["val_miou_pseudo_label"]
    assert again["val_miou_segmentation"] == s["val_miou_segmentation"]
    assert (out / "refine/irn/last.ckpt").stat().st_mtime_ns == mtime


def test_ablation_table(tiny_config, toy_voc, tmp_path):
    cfg = tmp_path / "abl.yaml"  # the mix branch from epoch 1: epoch 0 is shared
    cfg.write_text(tiny_config.read_text().replace("mix_start: 0", "mix_start: 1"))
    res = ablation.main(["--config", str(cfg), "--voc12_root", str(toy_voc),
                         "--seeds", "0", "--out", str(tmp_path / "abl")])["abl"]
    assert all(len(res[v]) == 1 for v in ("MCL", "MCL+PL-Mix"))
    test = res["paired"][0]  # PL-Mix (A) against MCL (B) on the same val images
    assert {"n", "mean_diff", "t", "p_value", "ci95"} <= set(test) and test["n"] == 4
    assert abs(test["miou_a"] - res["MCL+PL-Mix"][0]) < 1e-9
    assert abs(test["miou_b"] - res["MCL"][0]) < 1e-9
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| seed |" in md and "mean ± std" in md and "p (paired t)" in md
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 0
    mcl, mix = (read_metrics(tmp_path / "abl" / "abl" / d / "metrics.csv")
                for d in ("MCL_seed0", "MCL_PL-Mix_seed0"))
    assert mcl[0]["miou"] == mix[0]["miou"]  # the shared epoch
    for d in ("MCL_seed0", "MCL_PL-Mix_seed0"):  # both folders resumed, best.ckpt consistent
        folder = tmp_path / "abl" / "abl" / d
        best = load_checkpoint(folder / "best.ckpt")
        assert best["epoch"] == load_checkpoint(folder / "last.ckpt")["best_epoch"]
        assert "best.ckpt is missing" not in (folder / "train.log").read_text()  # forked with it
    assert float(mcl[1]["loss_mixseg"]) == 0 and float(mix[1]["loss_mixseg"]) > 0


def test_ablation_unknown_regime(tmp_path):
    import pytest

    from tool.common.errors import UserError

    with pytest.raises(UserError, match="--regimes: unknown big"):
        ablation.main(["--regimes", "scratch,big", "--out", str(tmp_path)])
