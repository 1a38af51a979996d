"""Process-group facts from the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK).

Without torchrun these are rank 0 of 1, so every caller also works as a plain single process.
"""
from __future__ import annotations

import os
from typing import TypeVar

import torch

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(items: list[T]) -> list[T]:
    """This rank's share of ``items``: every world-size-th item from its rank on.

    Sharding the full, fixed list (not what is left to do) keeps each item on the same rank
    from one run to the next, so resuming by skipping finished outputs still works.
    """
    rank, world = rank_world()
    return items[rank::world]


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each process on a machine takes its own GPU (cuda:LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
