"""Thread sizing: torch threads share the cores with the other processes of the machine."""
from __future__ import annotations

import pytest
import torch

from tool.common import runtime


@pytest.mark.parametrize("cores, local, want", [
    (2, None, 2),      # this machine, one trainer (its loader workers mostly wait)
    (16, "2", 8),      # 2 torchrun processes: 8 cores each
    (4, "8", 1),       # never below 1
])
def test_auto_threads_share_the_cores(monkeypatch, cores, local, want):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert runtime.configure_threads(0) == want == torch.get_num_threads()


def test_explicit_threads_and_omp_num_threads_win(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert runtime.configure_threads(3) == 3 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert runtime.configure_threads(0) == 2
