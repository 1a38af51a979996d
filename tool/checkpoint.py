"""Training checkpoints (decision D7): atomic ``last.ckpt`` every epoch, ``best.ckpt`` on
improvement; each holds everything needed to continue the run exactly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tool.errors import UserError
from tool.fileio import atomic_save


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save under a temporary name, then rename it into place."""
    atomic_save(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, with one-line errors for missing or broken files."""
    from net.weights import read_checkpoint

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} does not hold a dict")
    return ckpt


def rng_states() -> dict[str, Any]:
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}
