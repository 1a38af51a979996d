"""The training engine on a tiny regression stage (tests/common/engine_toy.py): the epoch order,
mid-epoch checkpoints, SIGKILL / SIGTERM and exact resume in 1 and 2 (Gloo) processes,
TensorBoard."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.common import engine_toy
from tests.utils import rows_without_time
from tool.common.checkpoint import load_checkpoint
from tool.common.engine import epoch_loader
from tool.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _toy(out: Path, *args: str, procs: int = 1) -> subprocess.CompletedProcess:
    launch = ([sys.executable] if procs == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}"])
    return subprocess.run([*launch, "-m", "tests.common.engine_toy", str(out), *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "last.ckpt"), load_checkpoint(b / "last.ckpt")
    assert ca["epoch"] == cb["epoch"] and cb["position"] is None
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert rows_without_time(a / "metrics.csv") == rows_without_time(b / "metrics.csv")


def test_epoch_order_is_a_shuffled_dataloaders_and_skips_exactly():
    ds = engine_toy.NoisyPoints(22)
    g = torch.Generator()
    import numpy as np

    g.manual_seed(int(np.random.SeedSequence([5, 3, 0]).generate_state(1)[0]))
    want = [b["y"] for b in DataLoader(ds, 4, shuffle=True, generator=g, drop_last=True)]
    got = [b["y"] for b in epoch_loader(ds, 3, 4, seed=5)]
    assert len(got) == len(want) == 5
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    tail = [b["y"] for b in epoch_loader(ds, 3, 4, seed=5, skip=2)]
    assert all(torch.equal(a, b) for a, b in zip(tail, want[2:])) and len(tail) == 3


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (no mid-epoch checkpoints): the reference."""
    out = tmp_path_factory.mktemp("straight")
    engine_toy.run(out)
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(straight, tmp_path):
    # killed in epoch 2 (the head takes no part but has zeroed gradients Adam steps), after
    # its iteration 3, one past the checkpoint of iteration 2
    r = _toy(tmp_path, "--checkpoint_every", "2", "--signal_at", "2:3:KILL")
    assert r.returncode == -signal.SIGKILL, r.stderr
    pos = load_checkpoint(tmp_path / "last.ckpt")["position"]
    assert (pos["epoch"], pos["iteration"]) == (2, 2) and len(pos["ranks"]) == 1
    r = _toy(tmp_path, "--checkpoint_every", "2", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr and "epoch 2, iteration 2" in r.stderr
    _same_run(straight, tmp_path)


@pytest.mark.slow
def test_sigterm_finishes_the_iteration_saves_and_resumes_exactly(straight, tmp_path):
    r = _toy(tmp_path, "--signal_at", "1:4:TERM")  # no periodic checkpoints at all
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "SIGTERM received" in r.stderr
    assert "stopped by SIGTERM at epoch 1, iteration 4" in r.stderr
    assert "continue it with engine_toy --resume" in r.stderr.splitlines()[-1]
    ck = load_checkpoint(tmp_path / "last.ckpt")
    assert ck["epoch"] == 0 and ck["position"]["iteration"] == 4
    r = _toy(tmp_path, "--resume")
    assert r.returncode == 0, r.stderr
    _same_run(straight, tmp_path)


def test_second_signal_exits_at_once(tmp_path):
    r = _toy(tmp_path, "--signal_at", "1:2:TERM", "--signal_at", "1:2:TERM")
    assert r.returncode == -signal.SIGTERM  # the default action: no checkpoint, no delay
    assert load_checkpoint(tmp_path / "last.ckpt")["position"] is None  # epoch 0's


@pytest.mark.slow
def test_two_gloo_processes_sigkill_and_sigterm_resume_exactly(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _toy(ref, procs=2).returncode == 0
    # SIGKILL of rank 0 mid-epoch 1; torchrun takes the other rank down
    r = _toy(run, "--checkpoint_every", "2", "--signal_at", "1:3:KILL", procs=2)
    assert r.returncode != 0
    pos = load_checkpoint(run / "last.ckpt")["position"]
    assert (pos["epoch"], pos["iteration"], len(pos["ranks"])) == (1, 2, 2)
    # SIGTERM to rank 0 only, in epoch 2: both ranks agree to stop after the iteration
    r = _toy(run, "--checkpoint_every", "2", "--resume", "--signal_at", "2:1:TERM", procs=2)
    assert r.returncode != 0 and "stopped by SIGTERM at epoch 2, iteration 1" in r.stderr
    assert load_checkpoint(run / "last.ckpt")["position"]["iteration"] == 1
    r = _toy(run, "--checkpoint_every", "2", "--resume", procs=2)
    assert r.returncode == 0, r.stderr
    _same_run(ref, run)


def test_a_mid_epoch_checkpoint_needs_as_many_processes(tmp_path):
    assert _toy(tmp_path, "--checkpoint_every", "2", "--signal_at", "1:3:KILL").returncode < 0
    ck = load_checkpoint(tmp_path / "last.ckpt")
    ranks = ck["position"]["ranks"]
    torch.save({**ck, "position": {**ck["position"], "ranks": ranks * 2}},
               tmp_path / "last.ckpt")  # as 2 processes would have saved it
    with pytest.raises(UserError, match=r"saved mid-epoch by 2 process\(es\); resume it with "
                                        r"as many \(this run has 1\)"):
        engine_toy.run(tmp_path, checkpoint_every=2, resume=True)


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    engine_toy.run(tmp_path / "run", epochs=2, tblog_dir=str(tmp_path / "tb"))
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"train/loss_mse", "train/lr", "epoch/loss_mse", "epoch/val_mse", "epoch/lr",
            "val/curve/epoch000", "val/curve/epoch001"} <= tags
    assert [s.step for s in ev.Scalars("train/loss_mse")] == list(range(1, 13))  # log_every 1
    assert [s.step for s in ev.Scalars("val/curve/epoch001")] == [10, 20]
    rows = rows_without_time(tmp_path / "run" / "metrics.csv")
    assert [round(s.value, 4) for s in ev.Scalars("epoch/val_mse")] == [
        round(float(r["val_mse"]), 4) for r in rows]


def test_iterations_per_epoch(monkeypatch):
    from tool.common.engine import iterations_per_epoch
    from tool.common.errors import UserError

    assert iterations_per_epoch(12, 4, "--b", "l.txt") == 3
    assert iterations_per_epoch(13, 4, "--b", "l.txt") == 3  # the incomplete batch is dropped
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert iterations_per_epoch(13, 4, "--b", "l.txt") == 1  # 7 images a process
    with pytest.raises(UserError, match=r"--b 8 is more than the 13 images of l.txt split "
                                        r"among 2 processes"):
        iterations_per_epoch(13, 8, "--b", "l.txt")


def test_network_of_names_the_saved_networks_differences():
    from tool.common.engine import network_of

    here = {"model": {"backbone": "resnet18", "backbone_width": 0.5}, "data": {"num_classes": 81}}
    voc = {"config": {"model": {"backbone": "resnet18", "backbone_width": 0.25},
                      "data": {"num_classes": 21}}}
    assert network_of(voc, here) == "a resnet18 (backbone_width 0.25, num_classes 21)"
    same = {"config": {"model": dict(here["model"]), "data": {"num_classes": 81}}}
    assert network_of(same, here) == "a resnet18"
    old = {"config": {"model": dict(here["model"])}}  # saved before the num_classes key
    assert network_of(old, here) == "a resnet18"
    assert network_of({"model": {}}, here) == "another network's"
