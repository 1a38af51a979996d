"""Atomic writes (tool/common/fileio.py): the final file has the mode of any new file of the
user (0666 minus the umask), not the 0600 of the temporary file it was written as."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from data.voc import save_label_png
from tool.common import fileio
from tool.common.checkpoint import save_checkpoint
from tool.common.metrics import write_metrics


def _write_all(out: Path) -> list[Path]:
    """One file of each kind the project writes atomically."""
    save_checkpoint(out / "last.ckpt", {"model": {"w": torch.zeros(2)}, "epoch": 0})
    fileio.save_npy_dict(out / "npy" / "a.npy", {0: np.zeros((2, 2), np.float32)})
    save_label_png(np.zeros((2, 2), np.uint8), out / "png" / "a.png")
    write_metrics(out / "metrics.csv", [{"epoch": 0, "loss": 1.0}], ("epoch", "loss"))
    fileio.save_text(out / "eval.json", "{}\n")
    return [out / "last.ckpt", out / "npy" / "a.npy", out / "png" / "a.png",
            out / "metrics.csv", out / "eval.json"]


def _modes(paths: list[Path]) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    paths = _write_all(tmp_path)
    assert _modes(paths) == {p.name: 0o666 & ~mask for p in paths}
    # a rewrite is a new file: it follows the umask of its own time
    umask(0o077)
    _write_all(tmp_path)
    assert set(_modes(paths).values()) == {0o600}
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind


def test_without_proc_the_umask_read_at_import_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_umask_from_proc", lambda: None)
    monkeypatch.setattr(fileio, "_UMASK_AT_IMPORT", 0o007)
    fileio.save_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o660


def test_the_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert fileio.current_umask() == 0o027
    assert fileio._umask_by_swap() == 0o027 and os.umask(0o027) == 0o027
