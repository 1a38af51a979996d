"""The stage-1 trainer stopped as a cluster stops it: SIGTERM and SIGKILL in the middle of an epoch
with CRF and DataLoader worker processes running; no child outlives the run, and ``--resume``
ends with the weights and metrics.csv of an uninterrupted run. TensorBoard output."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_mcl
from tests.utils import alive, descendants, rows_without_time, wait_until
from tool.common.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# 6 iterations per epoch, one log line each; the view losses and the PL-Mix branch from epoch 1
RUN = ("--batch_size", "2", "--log_every", "1", "--max_epoches", "2")
WORKERS = ("--crf", "True", "--crf_workers", "2", "--num_workers", "1")


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train_mcl.py", "--config", str(cfg), "--session_name", str(out),
         *RUN, *WORKERS, *extra], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _log_has(out: Path, text: str) -> bool:
    log = out / "train.log"
    return log.exists() and text in log.read_text()


def _stop(proc: subprocess.Popen, out: Path, when: str, sig: int) -> tuple[int, str, set[int]]:
    """Send ``sig`` once the log shows ``when``; returns (status, stderr, its children then)."""
    try:
        wait_until(lambda: _log_has(out, when) or proc.poll() is not None, 240, when)
        children = descendants(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    return proc.returncode, err, children


@pytest.mark.slow
def test_sigterm_and_sigkill_mid_epoch_leave_no_child_and_resume_exactly(tiny_config,
                                                                         tmp_path):
    straight = tmp_path / "straight"
    train_mcl.main(["--config", str(tiny_config), "--session_name", str(straight), *RUN])

    term = tmp_path / "term"
    rc, err, children = _stop(_start(tiny_config, term), term, "epoch 1 iter 2:", signal.SIGTERM)
    assert len(children) >= 3  # the CRF pool's two workers and a DataLoader worker at least
    assert rc == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: stopped by SIGTERM at epoch 1, iteration ")
    assert f"--session_name {term}" in last and last.endswith("--resume")
    pos = load_checkpoint(term / "last.ckpt")["position"]
    assert pos["epoch"] == 1 and pos["iteration"] >= 2
    wait_until(lambda: not alive(children), 20, f"children {alive(children)} to exit")
    assert not (term / ".lock").exists()

    kill = tmp_path / "kill"
    rc, _, children = _stop(_start(tiny_config, kill, "--checkpoint_every", "2"), kill,
                            "(epoch 1, 2 iterations done)", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    wait_until(lambda: not alive(children), 20, f"children {alive(children)} to exit")
    assert (kill / ".lock").exists()  # left by the killed run; the resume takes it over

    for out in (term, kill):
        train_mcl.main(["--config", str(tiny_config), "--session_name", str(out), *RUN,
                        "--resume"])
        a, b = load_checkpoint(straight / "last.ckpt"), load_checkpoint(out / "last.ckpt")
        assert b["position"] is None and b["epoch"] == 1
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()), out.name
        assert rows_without_time(straight / "metrics.csv") == rows_without_time(
            out / "metrics.csv")


def test_tensorboard_holds_losses_curve_and_cam_overlays(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    train_mcl.main(["--config", str(tiny_config), "--session_name", str(tmp_path / "r"),
                    "--max_epoches", "1", "--log_every", "1", "--tblog_dir", str(tb)])
    ev = EventAccumulator(str(tb))
    ev.Reload()
    scalars = set(ev.Tags()["scalars"])
    assert {"train/loss_cls", "train/loss_er", "train/lr", "epoch/miou", "epoch/val_map",
            "epoch/best_t", "epoch/loss_cls", "val/miou_by_threshold/epoch000"} <= scalars
    curve = ev.Scalars("val/miou_by_threshold/epoch000")  # x = 100 t over the sweep
    row = rows_without_time(tmp_path / "r" / "metrics.csv")[0]
    best = max(curve, key=lambda s: s.value)
    assert len(curve) > 1 and best.step == round(100 * float(row["best_t"]))
    assert abs(best.value - float(row["miou"])) < 1e-3
    images = ev.Tags()["images"]
    assert len(images) == 4 and all(t.startswith("cam/") for t in images)
    img = ev.Images(images[0])[0]
    assert img.width == 3 * img.height or img.width > img.height  # image | heat map | label
