"""Training checkpoints (decision D7): atomic ``last.ckpt`` every epoch, ``best.ckpt`` on
improvement; each holds everything needed to continue the run exactly."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from tool.common.errors import UserError
from tool.common.fileio import atomic_save


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save under a temporary name, then rename it into place."""
    atomic_save(path, lambda f: torch.save(state, f))


def _torch_load(path: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Checkpoints of earlier runs of this trainer also hold numpy RNG states, which the
        # restricted unpickler refuses; the user names the file explicitly, so a full unpickle
        # is acceptable here.
        return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str | os.PathLike) -> object:
    """Load a checkpoint file as it was saved (UserError when missing or unreadable)."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return _torch_load(path)
    except Exception as e:  # any unreadable file is the user's input error
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, with one-line errors for missing or broken files."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} does not hold a dict")
    return ckpt
