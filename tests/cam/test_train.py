"""Training end to end on a tiny toy set: every loss runs, resume is exact, bad input fails."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_mcl
from tests.utils import read_metrics, rows_without_time
from tool.cam.train import LOSS_COLUMNS
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError

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


def test_overlapped_crf_run_equals_the_plain_one(tiny_config, tmp_path):
    """crf_overlap (METHOD.md 5.4.1), here with a real pool of 2 CRF workers: one tiny epoch
    with the mix branch (3 iterations) gives the plain run's metrics up to float rounding."""
    rows = []
    for overlap, workers in (("false", "0"), ("true", "2")):
        _train(tiny_config, "--session_name", str(tmp_path / overlap), "--max_epoches", "1",
               "--crf_overlap", overlap, "--crf_workers", workers)
        rows += rows_without_time(tmp_path / overlap / "metrics.csv")
    plain, overlapped = rows
    assert float(plain["loss_mixseg"]) > 0 and plain.keys() == overlapped.keys()
    for key, value in plain.items():
        if value == "" or key == "epoch":
            assert overlapped[key] == value, key
        else:
            assert float(overlapped[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    assert "the CRF pseudo labels overlap the main loss's backward" in (
        tmp_path / "true" / "train.log").read_text()


def _cli(*args):
    return subprocess.run([sys.executable, "train_mcl.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


def _copy_voc(toy_voc, tmp_path):
    voc = tmp_path / "voc"
    shutil.copytree(toy_voc, voc)
    return voc


@pytest.mark.slow
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
    with pytest.raises(UserError, match="without an entry in .*cls_labels.npy: 2026_999999"):
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
                       "best_epoch", "selection", "config", "history", "grads",
                       "position"}  # "scaler" too with fp16 autocast
    assert ck["position"] is None  # the end of an epoch, not a mid-epoch checkpoint
    assert ck["best_epoch"] == 0  # the one epoch beat the floor of 0
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


# -- run-folder safety (tool/common/runfolder.py) and the checkpoint order -------------------

def _scored(monkeypatch, *values):
    """Make epoch e's selection score values[e] (its validation still runs), so which epochs
    are "best" is known in advance."""
    import tool.cam.train as T

    seen = iter(values)
    monkeypatch.setattr(T, "selection_score", lambda val, with_gt: next(seen))


def _same_model(a, b):
    return all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


@pytest.mark.slow
def test_kill_between_best_and_last_then_resume(tiny_config, tmp_path, monkeypatch):
    """best.ckpt is written before last.ckpt: a kill in between leaves last.ckpt at the previous
    epoch (never claiming a best that is not on disk), and --resume puts everything right."""
    import tool.common.engine as E

    three = ("--max_epoches", "3")
    _scored(monkeypatch, 20.0, 10.0, 30.0)  # epochs 0 and 2 are new bests, epoch 1 is not
    _train(tiny_config, "--session_name", str(tmp_path / "straight"), *three)
    real_save = E.save_checkpoint

    def save(path, ckpt):
        if path.name == "last.ckpt" and ckpt["epoch"] == 2:
            raise KeyboardInterrupt  # the kill, right after best.ckpt of epoch 2
        real_save(path, ckpt)

    run = tmp_path / "killed"
    _scored(monkeypatch, 20.0, 10.0, 30.0)
    monkeypatch.setattr(E, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_config, "--session_name", str(run), *three)
    last = load_checkpoint(run / "last.ckpt")
    assert last["epoch"] == 1 and last["best_epoch"] == 0
    assert load_checkpoint(run / "best.ckpt")["epoch"] == 2  # one epoch ahead
    assert len(read_metrics(run / "metrics.csv")) == 2  # never ahead of last.ckpt
    assert not (run / ".lock").exists()  # released on the way out

    monkeypatch.setattr(E, "save_checkpoint", real_save)
    _scored(monkeypatch, 30.0)  # epoch 2, trained again
    _train(tiny_config, "--session_name", str(run), *three, "--resume")
    assert "holds epoch 2, after last.ckpt's epoch 1" in (run / "train.log").read_text()
    best, last = load_checkpoint(run / "best.ckpt"), load_checkpoint(run / "last.ckpt")
    assert best["epoch"] == last["best_epoch"] == last["epoch"] == 2
    assert _same_model(best, load_checkpoint(tmp_path / "straight" / "best.ckpt"))
    assert rows_without_time(run / "metrics.csv") == rows_without_time(
        tmp_path / "straight" / "metrics.csv")


def test_resume_repairs_a_best_ckpt_left_behind(tiny_config, tmp_path, monkeypatch):
    """Earlier versions wrote last.ckpt first: a kill in between left best.ckpt at an older
    epoch. --resume rewrites it when last.ckpt is the best epoch itself, else warns."""
    run = tmp_path / "r"
    _scored(monkeypatch, 10.0, 20.0)
    _train(tiny_config, "--session_name", str(run))
    old = tmp_path / "old"
    _scored(monkeypatch, 10.0)
    _train(tiny_config, "--session_name", str(old), "--max_epoches", "1")
    shutil.copyfile(old / "last.ckpt", run / "best.ckpt")  # best.ckpt of epoch 0
    _train(tiny_config, "--session_name", str(run), "--resume")  # nothing left to train
    log = (run / "train.log").read_text()
    assert "holds epoch 0, but the best epoch is 1" in log and "rewrote it" in log
    best, last = load_checkpoint(run / "best.ckpt"), load_checkpoint(run / "last.ckpt")
    assert best["epoch"] == 1 and _same_model(best, last)

    (run / "best.ckpt").unlink()  # the best epoch's model is gone: say so, in one line
    ck = load_checkpoint(run / "last.ckpt")
    torch.save({**ck, "best_epoch": 0}, run / "last.ckpt")
    _train(tiny_config, "--session_name", str(run), "--resume")
    assert "best.ckpt is missing, but last.ckpt records epoch 0" in (
        run / "train.log").read_text()
    assert not (run / "best.ckpt").exists()


def test_rerun_without_resume_is_refused_before_any_compute(tiny_config, tmp_path,
                                                              monkeypatch):
    import tool.cam.train as T

    run = tmp_path / "r"
    _train(tiny_config, "--session_name", str(run), "--max_epoches", "1")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr(T, "build_loaders", lambda args: pytest.fail("computed"))
    with pytest.raises(UserError) as e:
        _train(tiny_config, "--session_name", str(run), "--max_epoches", "1")
    msg = str(e.value)
    assert str(run) in msg and "--resume" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
    with pytest.raises(UserError, match="exclude each other"):
        _train(tiny_config, "--session_name", str(run), "--resume", "--overwrite")
    monkeypatch.undo()
    # --overwrite starts over: epoch 0 again, and no file of the old run survives
    _scored(monkeypatch, -1.0)  # below the floor: no best.ckpt this time
    _train(tiny_config, "--session_name", str(run), "--max_epoches", "1", "--overwrite",
           "--seed", "8")
    assert not (run / "best.ckpt").exists()
    assert load_checkpoint(run / "last.ckpt")["config"]["run"]["seed"] == 8
    assert len(read_metrics(run / "metrics.csv")) == 1


def test_interrupt_message_names_resume(monkeypatch, capsys):
    import runpy

    import tool.cam.train as T

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["train_mcl.py"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "train_mcl.py"), run_name="__main__")
    assert e.value.code == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err


def test_live_lock_refuses_a_second_run(tiny_config, tmp_path, monkeypatch):
    import tool.cam.train as T

    run = tmp_path / "r"
    run.mkdir()
    other = subprocess.Popen(["sleep", "30"])  # stands for a run training in that folder
    try:
        (run / ".lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        monkeypatch.setattr(T, "build_loaders", lambda args: pytest.fail("computed"))
        with pytest.raises(UserError, match=f"in use by another run \\(PID {other.pid} "):
            _train(tiny_config, "--session_name", str(run))
        assert [p.name for p in run.iterdir()] == [".lock"]  # its lock stays
    finally:
        other.kill()
        other.wait()


def test_stale_lock_and_temporaries_of_a_killed_run(tiny_config, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()  # a run that ended without removing its lock
    (run / ".lock").write_text(f"{ended.pid} {socket.gethostname()}\n")
    (run / ".last.ckpt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    _train(tiny_config, "--session_name", str(run), "--max_epoches", "1")
    log = (run / "train.log").read_text()
    assert f"taking over {run / '.lock'}" in log and f"PID {ended.pid}" in log
    assert "removed 1 temporary file(s)" in log and ".last.ckpt.k1ll3d_x.tmp" in log
    assert sorted(p.name for p in run.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.csv",
                                                      "train.log"]


# -- the preflight (METHOD.md 12.7) and failed checkpoint writes ----------------------------

def _no_compute(monkeypatch):
    import tool.cam.train as T

    monkeypatch.setattr(T, "build_model", lambda *a: pytest.fail("model built"))
    monkeypatch.setattr(T, "build_loaders", lambda *a: pytest.fail("data sets built"))


def test_preflight_reports_every_problem_before_any_compute(tiny_config, toy_voc, tmp_path,
                                                            monkeypatch):
    voc = _copy_voc(toy_voc, tmp_path)
    seg = voc / "ImageSets/Segmentation"
    a, b, c, d, e = (seg / "train_aug.txt").read_text().split()[:5]
    (voc / "JPEGImages" / f"{a}.jpg").unlink()  # missing training image
    (voc / "JPEGImages" / f"{b}.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # corrupt header
    val = (seg / "train.txt").read_text().split()[0]
    (voc / "SegmentationClass" / f"{val}.png").unlink()  # validation mask gone
    labels = np.load(voc / "cls_labels.npy", allow_pickle=True).item()
    del labels[c]
    labels[d], labels[e] = np.ones(19, np.float32), np.array(["0"] * 20)
    np.save(voc / "cls_labels.npy", labels)
    out = tmp_path / "out"
    out.write_text("a file where the run folder should be")
    _no_compute(monkeypatch)
    with pytest.raises(UserError) as err:
        _train(tiny_config, "--voc12_root", str(voc), "--session_name", str(out),
               "--weights", str(tmp_path / "nope.ckpt"))
    lines = str(err.value).splitlines()
    assert lines[0] == "preflight found 7 problems:", str(err.value)
    expected = [f"--weights file not found: {tmp_path / 'nope.ckpt'}",
                f"without an entry in {voc / 'cls_labels.npy'}: {c}",
                f"{d} (shape (19,), expected (20,)), {e} (dtype <U1, expected numbers)",
                f"image not found: {voc / 'JPEGImages' / a}.jpg",
                f"cannot read image: {voc / 'JPEGImages' / b}.jpg",
                f"mask not found: {voc / 'SegmentationClass' / val}.png",
                f"--session_name {out} is a file, not a folder"]
    assert len(lines) == 1 + len(expected)
    for line, want in zip(lines[1:], expected):
        assert line.startswith("  - ") and want in line, (line, want)
    assert out.read_text() == "a file where the run folder should be"  # nothing written


@pytest.mark.slow
def test_preflight_cli_prints_every_line_and_exits_2(tiny_config, toy_voc, tmp_path):
    voc = _copy_voc(toy_voc, tmp_path)
    names = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    for n in names[:2]:
        (voc / "JPEGImages" / f"{n}.jpg").unlink()
    lst = tmp_path / "val.txt"
    lst.write_text(f"{names[3]}\n{names[4]}\n{names[3]}\n")
    r = _cli("--config", str(tiny_config), "--voc12_root", str(voc), "--val_list", str(lst),
             "--session_name", str(tmp_path / "r"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err == ["error: preflight found 2 problems:",
                   f"  - list file {lst} names {names[3]} twice (lines 1 and 3)",
                   f"  - image not found (2): {voc / 'JPEGImages' / names[0]}.jpg, "
                   f"{voc / 'JPEGImages' / names[1]}.jpg"]
    assert not (tmp_path / "r").exists()


def test_all_zero_training_labels_are_refused(tiny_config, toy_voc, tmp_path, monkeypatch):
    voc = _copy_voc(toy_voc, tmp_path)
    labels = np.load(voc / "cls_labels.npy", allow_pickle=True).item()
    np.save(voc / "cls_labels.npy", {k: np.zeros(20, np.float32) for k in labels})
    _no_compute(monkeypatch)
    with pytest.raises(UserError, match="train_aug.txt in .*cls_labels.npy is all zero"):
        _train(tiny_config, "--voc12_root", str(voc), "--session_name", str(tmp_path / "r"))


def test_too_little_disk_space_is_refused(tiny_config, tmp_path, monkeypatch):
    from collections import namedtuple

    import tool.common.preflight as P

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(P.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1 << 20))
    _no_compute(monkeypatch)
    with pytest.raises(UserError, match=r"1\.0 MiB free on its disk, the checkpoints need "):
        _train(tiny_config, "--session_name", str(tmp_path / "r"))


def test_full_disk_at_a_checkpoint_is_one_line_and_metrics_stay_behind(tiny_config, tmp_path,
                                                                      monkeypatch):
    import errno

    import tool.common.checkpoint as C

    run, real_save = tmp_path / "r", C.torch.save

    def full_disk(obj, f, *a, **kw):
        if obj.get("epoch") == 1:  # epoch 0 is saved, epoch 1 finds the disk full
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *a, **kw)

    _scored(monkeypatch, 20.0, 10.0)  # epoch 1 is no new best: last.ckpt is its first write
    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(UserError) as e:
        _train(tiny_config, "--session_name", str(run))
    msg = str(e.value)
    assert msg.startswith(f"cannot write {run / 'last.ckpt'}: No space left on device; free "
                          "space, then continue the run with ") and msg.endswith("--resume")
    assert "\n" not in msg
    assert load_checkpoint(run / "last.ckpt")["epoch"] == 0
    assert len(read_metrics(run / "metrics.csv")) == 1  # not ahead of last.ckpt
    assert sorted(p.name for p in run.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.csv",
                                                     "train.log"]  # no temporary, no lock

    monkeypatch.setattr(C.torch, "save", real_save)  # space freed: the run goes on
    _scored(monkeypatch, 10.0)
    _train(tiny_config, "--session_name", str(run), "--resume")
    assert load_checkpoint(run / "last.ckpt")["epoch"] == 1
    assert len(read_metrics(run / "metrics.csv")) == 2


def test_full_disk_at_a_mid_epoch_checkpoint(tiny_config, tmp_path, monkeypatch):
    import errno

    import tool.common.checkpoint as C

    def full_disk(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(UserError, match=r"^cannot write .*last\.ckpt: No space left on device; "
                                        r"free space, then start the run again$"):
        _train(tiny_config, "--session_name", str(tmp_path / "r"), "--checkpoint_every", "1")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["train.log"]


def test_coco_run_trains_validates_and_infers_81_classes(tiny_config, tmp_path):
    """num_classes 81 end to end on the toy COCO prepared by data.prepare_coco ((80,) label
    vectors, masks 0..80 and 255): one epoch with the PL-Mix branch and its CRF, validation on
    the GT masks, inference with the CRF and overlays; hand-off keys in 0..79, label values in
    0..80. The checkpoint in a VOC config is one line naming both class counts."""
    import infer_cam
    from data import prepare_coco, toy_coco
    from data.voc import load_cls_labels, load_img_name_list

    root = tmp_path / "coco_root"
    toy_coco.generate(tmp_path / "coco", seed=3, n_train=12, n_val=6)
    prepare_coco.prepare_coco(tmp_path / "coco", root, progress=False)
    seg = root / "ImageSets" / "Segmentation"
    data = ["--voc12_root", str(root), "--train_list", str(seg / "train.txt"),
            "--val_list", str(seg / "val.txt"), "--num_classes", "81"]
    run = tmp_path / "run"
    _train(tiny_config, *data, "--session_name", str(run), "--max_epoches", "1")
    ck = load_checkpoint(run / "last.ckpt")
    assert ck["model"]["fc.weight"].shape[0] == 81
    row = read_metrics(run / "metrics.csv")[0]
    assert float(row["loss_mixseg"]) > 0 and row["miou"] != ""  # PL-Mix and GT validation ran
    out = tmp_path / "infer"
    infer = ["--config", str(tiny_config), *data, "--weights", str(run / "last.ckpt"),
             "--infer_list", str(seg / "val.txt"), "--crf", "True"]
    assert infer_cam.main([*infer, "--out_npy", str(out / "npy"), "--out_png", str(out / "png"),
                           "--out_vis", str(out / "vis")]) == 5
    labels = load_cls_labels(root / "cls_labels.npy")
    for name in load_img_name_list(seg / "val.txt"):
        present = np.flatnonzero(labels[name])
        d = np.load(out / "npy" / f"{name}.npy", allow_pickle=True).item()
        assert sorted(d) == present.tolist() and all(0 <= k <= 79 for k in d)
        png = np.array(Image.open(out / "png" / f"{name}.png"))
        assert set(np.unique(png).tolist()) <= {0, *(present + 1).tolist()}
        assert (out / "vis" / f"{name}.png").is_file()
    assert any(labels[n][40:].any() for n in labels)  # classes beyond VOC's 20 are in play
    with pytest.raises(UserError) as e:  # the toy VOC of the tiny config, num_classes 21
        infer_cam.main(["--config", str(tiny_config), "--weights", str(run / "last.ckpt"),
                        "--out_npy", str(tmp_path / "voc_npy")])
    assert str(e.value).startswith(f"{run / 'last.ckpt'} holds a CAM network of 81 classes "
                                   "(MS COCO 2014), this config's num_classes is 21 ")
