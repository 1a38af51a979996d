"""Process groups for ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK in the environment).

Without torchrun every helper here sees rank 0 of 1 and does nothing, so the same code is the
plain single-process program. Training joins a process group (NCCL on CUDA, Gloo on CPU) and
wraps the model in DistributedDataParallel; inference only shards its image list.
"""
from __future__ import annotations

import io
import os
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0: the one process that writes logs, metrics, checkpoints and pictures."""
    return rank_world()[0] == 0


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


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group: NCCL on CUDA, Gloo on CPU. False when not launched
    by torchrun with more than one process (nothing to join)."""
    if rank_world()[1] == 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def is_distributed() -> bool:
    """True inside a joined process group (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Element-wise sum of ``values`` over the ranks (the array itself outside torchrun).

    Integers stay integers, so summed confusion counts are exact. ``device`` is this rank's
    device: NCCL reduces CUDA tensors only.
    """
    if not is_distributed():
        return values
    t = torch.tensor(values, device=device)  # a copy: ``values`` itself stays this rank's
    dist.all_reduce(t)
    return t.cpu().numpy()


def _pack(obj: object) -> bytes:
    """``obj`` as torch.save bytes: tensors inside objects do not survive the collectives'
    plain pickling (their storages lose the dtype on the way), torch's own format does."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> object:
    # our own ranks' data (already-validated checkpoints, RNG states): no restricted unpickler
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (e.g. a checkpoint only rank 0's machine holds)."""
    if not is_distributed():
        return obj
    box = [_pack(obj) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return _unpack(box[0])


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside torchrun)."""
    if not is_distributed():
        return [obj]
    box: list = [None] * rank_world()[1]
    dist.all_gather_object(box, _pack(obj))
    return [_unpack(b) for b in box]


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics), so all ranks evaluate the
    very model rank 0 saves."""
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun; ``module`` itself otherwise.

    ``find_unused_parameters``: the view step leaves ``fc`` unused (its weight enters the CAM
    detached), and DDP must then leave its gradient at None, as a single process does.
    """
    if not is_distributed():
        return module
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
