"""Checkpoint reading (tool/common/checkpoint.py) is safe by default: nothing in a file runs
unless the user opts in (allow_pickle / PLMIX_UNSAFE_PICKLE=1), and what the engine writes,
mid-epoch random states included, loads without the opt-in."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from net.weights import load_cam_weights
from tool.common import checkpoint
from tool.common.checkpoint import UNSAFE_PICKLE_ENV, load_checkpoint, read_checkpoint
from tool.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


class Touch:
    """Unpickling it calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)


def test_a_crafted_pickle_runs_nothing_and_is_one_line(tmp_path):
    marker = tmp_path / "ran"
    for fmt in (True, False):  # the zip format and the legacy one
        path = tmp_path / f"evil{fmt}.ckpt"
        torch.save({"model": {"w": torch.zeros(1)}, "x": Touch(marker)}, path,
                   _use_new_zipfile_serialization=fmt)
        for load in (read_checkpoint, load_checkpoint,
                     lambda p: load_cam_weights(torch.nn.Linear(1, 1), p)):  # --weights
            with pytest.raises(UserError) as e:
                load(path)
            msg = str(e.value)
            assert "\n" not in msg and str(path) in msg and "io.open" in msg
            assert f"{UNSAFE_PICKLE_ENV}=1" in msg and "runs whatever code" in msg
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_raw_pickle_or_garbage_is_refused_without_running(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"x": Touch(marker)}, protocol=4))
    (tmp_path / "junk.ckpt").write_bytes(b"garbage, not a checkpoint")
    for name in ("raw.pkl", "junk.ckpt"):
        with pytest.raises(UserError, match=r"is not a checkpoint the safe loader can read") as e:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value)
    assert not marker.exists()


def test_opting_in_loads_with_a_warning_naming_the_file(tmp_path, monkeypatch, caplog):
    path = tmp_path / "released.ckpt"  # e.g. a third-party checkpoint that saved its args
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match=r"argparse\.Namespace.*PLMIX_UNSAFE_PICKLE=1"):
        load_checkpoint(path)
    with caplog.at_level(logging.WARNING, logger="plmix"):
        assert load_checkpoint(path, allow_pickle=True)["args"].lr == 0.1
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    assert load_checkpoint(path)["args"].lr == 0.1
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "0")
    with pytest.raises(UserError):
        load_checkpoint(path)


def _weights_only(path: Path) -> dict:
    """The file as the restricted unpickler reads it (raises if it needs more)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def test_engine_mid_epoch_checkpoint_loads_safely(tmp_path, monkeypatch):
    """A SIGKILLed toy run's mid-epoch last.ckpt: every rank's RNG states (Python, numpy,
    torch), the stage's torch.Generator state, optimizer and scheduler state."""
    r = subprocess.run([sys.executable, "-m", "tests.common.engine_toy", str(tmp_path),
                        "--checkpoint_every", "2", "--signal_at", "1:3:KILL"], cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    ck = _weights_only(tmp_path / "last.ckpt")
    assert (ck["position"]["epoch"], ck["position"]["iteration"]) == (1, 2)
    assert set(ck["position"]["ranks"][0]["rng"]) == {"python", "numpy", "torch", "cuda"}
    monkeypatch.setattr(checkpoint, "_torch_load_unsafe", None)  # would raise if reached
    assert read_checkpoint(tmp_path / "last.ckpt")["position"]["iteration"] == 2


def test_allow_pickle_flag_opts_in_for_the_run(tmp_path, tiny_config, trained, monkeypatch):
    """``--allow_pickle True`` on an entry point is the same opt-in as the variable."""
    import infer_cam

    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "0")  # restored after the test, opt-in included
    ck = load_checkpoint(trained)
    path = tmp_path / "with_namespace.ckpt"
    torch.save({**ck, "args": argparse.Namespace(lr=0.1)}, path)
    out = tmp_path / "npy"
    common = ["--config", str(tiny_config), "--weights", str(path),
              "--out_npy", str(out), "--out_png", "None", "--crf", "False"]
    with pytest.raises(UserError, match="--allow_pickle True"):
        infer_cam.main(common)
    assert not out.exists()
    assert infer_cam.main([*common, "--allow_pickle", "True"]) > 0
