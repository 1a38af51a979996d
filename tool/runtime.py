"""Run-time plumbing shared by the entry points: device choice, seeding, logging."""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

from tool.errors import UserError

log = logging.getLogger("plmix")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU (decision D5)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, but no CUDA device is available")
    return dev


def seed_everything(seed: int, epoch: int = 0) -> None:
    """Seed Python, numpy and torch from (seed, epoch).

    Re-seeding at every epoch start makes a resumed run draw exactly what an uninterrupted
    one draws, without replaying the random streams of earlier epochs.
    """
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def epoch_generators(seed: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    """Explicit generators for the training step's own draws (decision D6)."""
    rng = np.random.default_rng([seed, epoch, 1])
    g = torch.Generator(device="cpu")
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, 2]).generate_state(1)[0]))
    return rng, g


def setup_logging(logfile: str | Path | None = None) -> None:
    """Log to stderr and, when given, to ``logfile`` (appended)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)
