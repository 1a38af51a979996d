"""Training end to end on a tiny toy set: every loss runs, resume is exact, bad input fails."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_mcl
from tests.utils import read_metrics, rows_without_time
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError
from tool.common.metrics import LOSS_COLUMNS

ROOT = Path(__file__).resolve().parents[2]


def _train(cfg, *extra):
    return train_mcl.main(["--config", str(cfg), *extra])


def test_two_epochs_straight_equals_one_plus_resume(tiny_config, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(tiny_config, "--session_name", str(straight))
    _train(tiny_config, "--session_name", str(resumed), "--max_epoches", "1")
    _train(tiny_config, "--session_name", str(resumed), "--resume")
    a = load_checkpoint(straight / "last.ckpt")
    b = load_checkpoint(resumed / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert rows_without_time(straight / "metrics.csv") == rows_without_time(
        resumed / "metrics.csv")
    rows = read_metrics(straight / "metrics.csv")
    # epoch 0: IMC + mix branch on; epoch 1 adds augmentation, PixPro and EMD
    assert float(rows[0]["loss_pixpro"]) == 0.0 and float(rows[1]["loss_pixpro"]) > 0
    for col in ("loss_cls", "loss_er", "loss_mixseg", "loss_dice", "loss_iou"):
        assert all(float(r[col]) > 0 for r in rows), col
    assert set(LOSS_COLUMNS) <= set(rows[0])
    assert a["camT"] == float(rows[1]["best_t"])  # camT follows the best threshold (Q2)


def test_plmix_off_gives_zero_mix_columns(tiny_config, tmp_path):
    _train(tiny_config, "--session_name", str(tmp_path / "r"), "--max_epoches", "1",
           "--plmix", "False")
    row = read_metrics(tmp_path / "r" / "metrics.csv")[0]
    assert all(float(row[c]) == 0.0 for c in ("loss_mixseg", "loss_dice", "loss_iou", "loss_sc"))


def _cli(*args):
    return subprocess.run([sys.executable, "train_mcl.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


def _copy_voc(toy_voc, tmp_path):
    voc = tmp_path / "voc"
    shutil.copytree(toy_voc, voc)
    return voc


def test_missing_image_is_one_line_error(tiny_config, toy_voc, tmp_path):
    voc = _copy_voc(toy_voc, tmp_path)
    name = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()[0]
    victim = voc / "JPEGImages" / f"{name}.jpg"
    victim.unlink()
    r = _cli("--config", str(tiny_config), "--voc12_root", str(voc), "--session_name",
             str(tmp_path / "r"), "--max_epoches", "1")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image not found") and victim.name in last
    assert not (tmp_path / "r" / "last.ckpt").exists()


def test_corrupt_jpeg(tiny_config, toy_voc, tmp_path):
    voc = _copy_voc(toy_voc, tmp_path)
    name = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()[0]
    victim = voc / "JPEGImages" / f"{name}.jpg"
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match=victim.name):
        _train(tiny_config, "--voc12_root", str(voc), "--session_name", str(tmp_path / "r"),
               "--max_epoches", "1", "--num_workers", "0")


def test_name_absent_from_cls_labels(tiny_config, toy_voc, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("2026_999999\n")
    with pytest.raises(UserError, match="2026_999999 has no entry"):
        _train(tiny_config, "--train_list", str(lst), "--session_name", str(tmp_path / "r"))


def test_missing_and_mismatched_weights(tiny_config, tmp_path):
    with pytest.raises(UserError, match="not found"):
        _train(tiny_config, "--weights", str(tmp_path / "nope.ckpt"))
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "bad.ckpt")
    with pytest.raises(UserError, match="bad.ckpt"):
        _train(tiny_config, "--weights", str(tmp_path / "bad.ckpt"))


def test_unknown_flag_and_config_key(tiny_config, tmp_path):
    r = _cli("--config", str(tiny_config), "--max_epochs", "3")
    assert r.returncode == 2 and "unrecognized arguments: --max_epochs" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text() + "loss:\n  focal_beta: 1\n")
    r = _cli("--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: unknown config key 'loss.focal_beta' in {bad}"


def test_checkpoint_holds_d7_state(tiny_config, tmp_path):
    _train(tiny_config, "--session_name", str(tmp_path / "r"), "--max_epoches", "1")
    ck = load_checkpoint(tmp_path / "r" / "last.ckpt")
    assert set(ck) == {"model", "optimizer", "scheduler", "epoch", "camT", "best_score",
                       "selection", "config", "history"}  # "scaler" too with fp16 autocast
    assert ck["config"]["train"]["max_epoches"] == 1
    assert np.isfinite(ck["best_score"]) and ck["selection"] == "val_miou"


def test_missing_validation_mask(tiny_config, toy_voc, tmp_path):
    voc = _copy_voc(toy_voc, tmp_path)
    name = (voc / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    (voc / "SegmentationClass" / f"{name}.png").unlink()
    with pytest.raises(UserError, match=f"mask not found: .*{name}.png"):
        _train(tiny_config, "--voc12_root", str(voc), "--session_name", str(tmp_path / "r"),
               "--max_epoches", "1")
    assert not (tmp_path / "r" / "last.ckpt").exists()


def test_gt_free_protocol_reads_no_mask(tiny_config, toy_voc, tmp_path):
    voc = _copy_voc(toy_voc, tmp_path)
    shutil.rmtree(voc / "SegmentationClass")  # any read of a mask would fail
    out = tmp_path / "r"
    _train(tiny_config, "--voc12_root", str(voc), "--session_name", str(out),
           "--select_with_gt", "False", "--camT", "0.25")
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 2
    for r in rows:  # camT stays as configured; no threshold or mIoU without masks
        assert float(r["camT"]) == 0.25 and r["best_t"] == r["miou"] == ""
        assert 0 < float(r["val_map"]) <= 100
    last, best = load_checkpoint(out / "last.ckpt"), load_checkpoint(out / "best.ckpt")
    assert last["camT"] == 0.25 and last["selection"] == "val_map"
    top = max(float(r["val_map"]) for r in rows)  # best.ckpt follows the mAP
    assert float(rows[best["epoch"]]["val_map"]) == top
    assert best["best_score"] == pytest.approx(top, rel=1e-5)


def test_mean_average_precision_by_hand():
    from tool.cam.validate import mean_average_precision

    scores = np.array([[0.9, 0.1], [0.8, 0.4], [0.7, 0.3], [0.6, 0.2]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # class 2 has no positive: left out
    assert mean_average_precision(scores, labels) == pytest.approx(100 * (1 + 2 / 3) / 2)
    labels[1, 1] = 1  # class 2: its one positive ranked first -> AP 1
    assert mean_average_precision(scores, labels) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
