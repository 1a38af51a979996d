"""Thread sizing: torch threads share the cores with the other processes of the machine."""
from __future__ import annotations

import pytest
import torch

from tool.common import runtime


@pytest.mark.parametrize("cores, local, loader, want", [
    (2, None, 1, 1),   # this machine, one trainer and a loader worker: 1 thread
    (2, None, 0, 2),
    (16, "2", 3, 5),   # 2 torchrun processes: 8 cores each, 3 taken by loader workers
    (4, "8", 2, 1),    # never below 1
])
def test_auto_threads_share_the_cores(monkeypatch, cores, local, loader, want):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert runtime.configure_threads(0, loader) == want == torch.get_num_threads()


def test_explicit_threads_and_omp_num_threads_win(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert runtime.configure_threads(3, 1) == 3 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert runtime.configure_threads(0, 0) == 2
