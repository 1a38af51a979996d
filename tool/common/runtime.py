"""Run-time plumbing shared by the entry points: device and precision choice, threads, seeding
(the log format: ``tool.common.logs``)."""
from __future__ import annotations

import logging
import os
import random

import cv2
import numpy as np
import torch

from tool.common.errors import UserError

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


def _key(key: list[int], rank: int) -> list[int]:
    """Seed key of one random stream on one rank. Rank 0 keeps the single-process key, so a
    plain ``python train_mcl.py`` draws what it always drew; other ranks append their rank."""
    return key + [rank] if rank else key


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed Python, numpy and torch from (seed, epoch, rank).

    Re-seeding at every epoch start makes a resumed run draw exactly what an uninterrupted
    one draws, without replaying the random streams of earlier epochs.
    """
    s = int(np.random.SeedSequence(_key([seed, epoch], rank)).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def get_rng_state() -> dict:
    """The global random states (Python, numpy, torch CPU and CUDA) as tensors and plain
    values, which a ``weights_only`` checkpoint load accepts."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"]),
                                            "pos": np_state["state"]["pos"]}},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only where CUDA runs)."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np_state["state"]["key"].numpy(),
                                               "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generators(seed: int, epoch: int, rank: int = 0
                     ) -> tuple[np.random.Generator, torch.Generator]:
    """Explicit generators for the training step's own draws (decision D6), one pair per rank
    so the processes of a DDP run draw different angles, placements and partners."""
    rng = np.random.default_rng(_key([seed, epoch, 1], rank))
    g = torch.Generator(device="cpu")
    g.manual_seed(int(np.random.SeedSequence(_key([seed, epoch, 2], rank)).generate_state(1)[0]))
    return rng, g


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads (and OpenCV's) for this process; returns the count.

    ``threads`` > 0 is used as given. 0 (auto) shares the cores among the torchrun processes
    of this machine (LOCAL_WORLD_SIZE): ``cores // local processes``, at least 1. DataLoader
    and CRF workers are not counted: they mostly wait (a full prefetch queue, or the trainer
    waiting for the CRF). Measured on 2 cores (README, Threads): a toy epoch with 2 threads
    beside a loader worker took the time of 2 threads without one, and 1 thread beside it was
    1.4-1.5x slower. An ``OMP_NUM_THREADS`` set by the user wins over auto.
    """
    if threads <= 0:
        if os.environ.get("OMP_NUM_THREADS"):
            threads = torch.get_num_threads()
        else:
            threads = max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(enabled: bool, name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None = float32 throughout).

    ``auto`` is bfloat16 on CPU and on GPUs that support it (no loss scaling needed), float16
    on older GPUs.
    """
    if not enabled:
        return None
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if device.type != "cuda" or cuda_bf16 else torch.float16
    if name not in AMP_DTYPES:
        raise UserError(f"--amp_dtype {name!r}: expected auto, bf16 or fp16")
    return AMP_DTYPES[name]
