"""A tiny regression Stage for the engine tests, and a runner for subprocess / torchrun runs.

    python -m tests.common.engine_toy OUT [--epochs 3] [--checkpoint_every 2] [--resume]
        [--signal_at EPOCH:ITER:SIGNAL ...]

Its step draws from all three random sources the engine must restore mid-epoch: the global
torch RNG (dropout), the epoch's own generator (input noise) and the dataset's (seed, epoch,
index) augmentation. With ``--signal_at``, rank 0 sends itself SIGNAL (TERM, KILL, ...) inside
that iteration, after its optimizer step: a kill or a preemption at a known point.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tool.common.dist import (
    cleanup_distributed,
    init_distributed,
    is_main,
    rank_world,
    wrap_ddp,
)
from tool.common.engine import Engine, EngineConfig, EpochResult, Stage
from tool.common.errors import cli_main
from tool.common.logs import setup_logging


class NoisyPoints(Dataset):
    """y = x . w_true, with x jittered by (seed, epoch, index) noise (as the real datasets)."""

    def __init__(self, n: int = 24, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.x = g.standard_normal((n, 4)).astype(np.float32)
        self.y = self.x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        jitter = np.random.default_rng([self.seed, self.epoch, i]).normal(0, 0.1, 4)
        return {"x": torch.from_numpy(self.x[i] + jitter.astype(np.float32)),
                "y": torch.tensor(self.y[i])}


class Net(nn.Module):
    """A small MLP whose ``head`` takes part in odd epochs only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, use_head: bool) -> torch.Tensor:
        y = self.body(x).squeeze(1)
        return self.head(y[:, None]).squeeze(1) if use_head else y


class Gen:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"g": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])


class ToyStage(Stage):
    columns = ("epoch", "lr", "loss_mse", "val_mse", "seconds")
    loss_columns = ("loss_mse",)

    def __init__(self, signal_at: list[tuple[int, int, int]] = ()) -> None:
        torch.manual_seed(0)
        self.net = Net()
        self.module = wrap_ddp(self.net)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.05)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, "max",
                                                                    factor=0.5, patience=0)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.train_set = NoisyPoints()
        self.val = NoisyPoints(8, seed=1)
        self.signal_at = list(signal_at)
        self.iteration = 0

    def begin_epoch(self, epoch: int) -> Gen:
        self.epoch, self.iteration = epoch, 0
        return Gen(1000 * epoch + rank_world()[0])

    def step(self, model: nn.Module, batch: dict, gen: Gen) -> dict[str, float]:
        self.net.train()
        x = batch["x"] + 0.05 * torch.randn(batch["x"].shape, generator=gen.g)
        loss = nn.functional.mse_loss(model(x, self.epoch % 2 == 1), batch["y"])
        # released-style zeroing (quirk Q29): once the head had a gradient, Adam keeps
        # stepping it on its momentum in the epochs it takes no part in
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        for e, i, sig in self.signal_at:
            if (e, i) == (self.epoch, self.iteration) and is_main():
                os.kill(os.getpid(), sig)
        return {"loss_mse": float(loss.detach())}

    def end_epoch(self, epoch: int) -> EpochResult:
        self.net.eval()
        with torch.no_grad():
            x = torch.from_numpy(self.val.x)
            mse = float(nn.functional.mse_loss(self.net(x, epoch % 2 == 1),
                                               torch.from_numpy(self.val.y)))
        self.scheduler.step(-mse)
        return EpochResult(-mse, {"val_mse": mse}, f"val mse {mse:.4f}",
                           {"val/curve": {0.1: mse, 0.2: 2 * mse}})


def run(out: Path, epochs: int = 3, checkpoint_every: int = 0, resume: bool = False,
        signal_at: list[tuple[int, int, int]] = (), tblog_dir: str | None = None) -> Engine:
    out.mkdir(parents=True, exist_ok=True)
    cfg = EngineConfig(out=out, max_epochs=epochs, batch_size=4, num_workers=0, seed=5,
                       device=torch.device("cpu"), log_every=1,
                       checkpoint_every=checkpoint_every, tblog_dir=tblog_dir, resume=resume,
                       resume_command="engine_toy --resume")
    engine = Engine(ToyStage(signal_at), cfg)
    engine.fit()
    return engine


def _signal_at(text: str) -> tuple[int, int, int]:
    e, i, name = text.split(":")
    return int(e), int(i), int(getattr(signal, f"SIG{name}"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checkpoint_every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--signal_at", type=_signal_at, action="append", default=[])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    try:
        setup_logging(a.out / "train.log" if is_main() else None, quiet=not is_main())
        run(a.out, a.epochs, a.checkpoint_every, a.resume, a.signal_at)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]))
