"""The training engine every stage runs on (METHOD.md 12): the epoch loop, checkpoints, exact
resume (also mid-epoch), preemption, ``metrics.csv``, TensorBoard.

A stage hands over a :class:`Stage`: its network, optimizer, scheduler, training set, one step
function and one end-of-epoch function (validation and what follows from it). The engine does
the rest, identically for every stage:

- ``last.ckpt`` after every epoch (and every ``checkpoint_every`` iterations, with the sampler
  position, every rank's random states and the running loss sums, so a resumed run ends with the
  very weights and ``metrics.csv`` of an uninterrupted one), ``best.ckpt`` on a new best score,
  written before ``last.ckpt`` so that the two never disagree for good;
- SIGTERM / SIGINT: the current iteration finishes, ``last.ckpt`` is written, the stage's worker
  pools stop and the run exits with :class:`~tool.common.errors.TrainingStopped` (status 128 +
  signal) naming the ``--resume`` command; a second signal ends the process at once;
- under torchrun the ranks agree on stopping and on checkpoints; rank 0 alone writes files.
"""
from __future__ import annotations

import logging
import shlex
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from tool.common.checkpoint import (
    allow_unsafe_pickle,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from tool.common.dist import (
    all_gather_object,
    all_reduce_sum,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_main,
    local_device,
    rank_world,
)
from tool.common.errors import TrainingStopped, UserError
from tool.common.logs import setup_logging
from tool.common.metrics import write_metrics
from tool.common.preflight import PreflightError, reported_write
from tool.common.runfolder import claim_run_folder
from tool.common.runtime import (
    configure_threads,
    get_rng_state,
    resolve_device,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("plmix")


@dataclass
class EpochResult:
    """What a stage's end of epoch reports: the selection score (higher is better: it picks
    ``best.ckpt``), the stage's metrics.csv columns and a summary for the log."""

    score: float
    row: dict[str, Any]
    summary: str
    curves: dict[str, dict[float, float]] = field(default_factory=dict)  # TensorBoard only


class Stage(ABC):
    """One stage's training recipe. ``net`` is what checkpoints hold and validation scores;
    ``module`` runs ``step`` and is what DistributedDataParallel wraps (often ``net`` itself)."""

    net: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    train_set: Dataset
    collate_fn: Any = None
    columns: tuple[str, ...]       # metrics.csv, in order (epoch, lr, losses, ..., seconds)
    loss_columns: tuple[str, ...]  # epoch means of the step's losses (0 when inactive)
    initial_best: float = float("-inf")  # a score must beat this to write best.ckpt

    @abstractmethod
    def begin_epoch(self, epoch: int) -> Any:
        """The epoch's own state (generators...) for ``step``; it may have ``state_dict`` /
        ``load_state_dict`` for mid-epoch checkpoints. The global RNGs are already seeded."""

    @abstractmethod
    def step(self, model: nn.Module, batch: Any, epoch_state: Any) -> dict[str, float]:
        """One iteration (forward, backward, optimizer step); returns its loss values.
        model: ``module``, wrapped in DDP under torchrun."""

    @abstractmethod
    def end_epoch(self, epoch: int) -> EpochResult:
        """Validate (on every rank) and update the stage's state; step the scheduler."""

    def state_dict(self) -> dict[str, Any]:
        """Stage state saved at the top level of the checkpoint (e.g. stage 1's ``camT``)."""
        return {}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved, from the whole checkpoint dict."""
        return None

    def log_images(self, writer: Any, epoch: int) -> None:
        """Add a few pictures to TensorBoard at the end of an epoch (rank 0 only)."""
        return None


@dataclass
class RunState:
    """The run's progress: ``epoch`` is the last finished one (-1: none); ``position`` is set
    by a mid-epoch checkpoint (the epoch it stopped in, batches done, every rank's state)."""

    epoch: int = -1
    best_score: float = float("-inf")
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    position: dict | None = None


@dataclass
class EngineConfig:
    out: Path
    max_epochs: int
    batch_size: int
    num_workers: int
    seed: int
    device: torch.device
    log_every: int = 0            # iterations between loss log lines / TensorBoard scalars
    checkpoint_every: int = 0     # iterations between mid-epoch checkpoints (0: epochs only)
    tblog_dir: str | None = None
    config: dict = field(default_factory=dict)  # saved in every checkpoint
    resume: bool | str = False
    resume_command: str = "the same command with --resume"
    allow_pickle: bool = False  # --resume of a file that needs full unpickling (checkpoint.py)


# ------------------------------------------------------------------------- signals


class StopSignals:
    """SIGTERM / SIGINT -> ``requested`` (the loop finishes its iteration and checkpoints);
    a second one restores the default action and re-sends itself: the process ends at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signum
        log.warning("%s received: finishing this iteration and saving a checkpoint (send it "
                    "again to stop at once, losing the epoch's progress since the last "
                    "checkpoint)", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        try:
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. a test harness): signals stay default
            self._old.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the trainer: a Ctrl-C reaches the whole
    process group, and a worker killed by it would break the iteration being finished."""
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


# ------------------------------------------------------------------------- data order


class _SkipBatches:
    """A batch sampler without its first ``skip`` batches. The skipped batches' indices are
    still drawn (the same generator draws as an uninterrupted epoch) but no image is loaded."""

    def __init__(self, batches: BatchSampler, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def epoch_loader(ds: Dataset, epoch: int, batch_size: int, seed: int, num_workers: int = 0,
                 collate_fn: Any = None, skip: int = 0) -> DataLoader:
    """The epoch's batches in an order fixed by (seed, epoch), without the first ``skip``.

    One process: a random permutation from a generator seeded by (seed, epoch). Under torchrun:
    a DistributedSampler (each rank its share; ``batch_size`` is per process). Incomplete last
    batches are dropped. The datasets draw their augmentation from (seed, epoch, index)
    (``set_epoch``), so a batch is the same whichever run or worker loads it.
    """
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    rank, world = rank_world()
    gen = None
    if world > 1:
        sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    else:
        gen = torch.Generator()
        gen.manual_seed(int(np.random.SeedSequence([seed, epoch, 0]).generate_state(1)[0]))
        sampler = RandomSampler(ds, generator=gen)
    batches = _SkipBatches(BatchSampler(sampler, batch_size, drop_last=True), skip)
    # ``generator``: the loader draws its workers' base seed from it first, then the sampler
    # draws the permutation (as DataLoader(shuffle=True, generator=gen) does)
    return DataLoader(ds, batch_sampler=batches, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      generator=gen, worker_init_fn=_ignore_stop_signals if num_workers else None)


# ------------------------------------------------------------------------- the engine


def iterations_per_epoch(n_images: int, batch_size: int, flag: str, list_path: str) -> int:
    """Full batches per epoch and process (incomplete ones are dropped, ``epoch_loader``); a
    batch larger than a process's share of the list is one UserError naming ``flag``."""
    world = rank_world()[1]
    n = -(-n_images // world) // batch_size
    if n == 0:
        raise UserError(f"{flag} {batch_size} is more than the {n_images} images of "
                        f"{list_path}{f' split among {world} processes' if world > 1 else ''}")
    return n


def on_main_rank(write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 only; a UserError it raises is raised on every rank (in place of
    a barrier: the other ranks hear of rank 0's failure instead of waiting for it)."""
    error = None
    if is_main():
        try:
            write()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise UserError(error)


class Engine:
    """Runs a :class:`Stage` for ``cfg.max_epochs`` epochs (see the module docstring)."""

    def __init__(self, stage: Stage, cfg: EngineConfig) -> None:
        self.stage, self.cfg = stage, cfg
        self.state = RunState(best_score=stage.initial_best)
        self.signals = StopSignals()
        self.writer = None

    # -- checkpoints

    def checkpoint(self, position: dict | None = None) -> dict[str, Any]:
        s, st = self.stage, self.state
        ckpt = {"model": s.net.state_dict(), "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(), "epoch": st.epoch,
                "best_score": st.best_score, "best_epoch": st.best_epoch,
                "history": st.history, "config": self.cfg.config,
                # Q29-style zeroed gradients make Adam step every parameter that ever had one:
                # which ones do is part of the optimizer's state
                "grads": [n for n, p in s.net.named_parameters() if p.grad is not None],
                "position": position, **s.state_dict()}
        if s.scaler.is_enabled():
            ckpt["scaler"] = s.scaler.state_dict()
        return ckpt

    def save_epoch(self, is_best: bool) -> None:
        """Rank 0 writes best.ckpt (on a new best) before last.ckpt before metrics.csv, so a
        kill between two writes is harmless: last.ckpt never claims a best.ckpt that is not on
        disk, and metrics.csv never lists an epoch that --resume would not find. A failed write
        (full disk) stops every rank with one line (METHOD.md 12.7) and leaves the files as a
        kill at that point would."""
        def write() -> None:
            out, ckpt = self.cfg.out, self.checkpoint()
            hint = self._write_hint()
            if is_best:
                with reported_write(out / "best.ckpt", hint):
                    save_checkpoint(out / "best.ckpt", ckpt)
                log.info("new best score %.2f: saved %s", self.state.best_score,
                         out / "best.ckpt")
            with reported_write(out / "last.ckpt", hint):
                save_checkpoint(out / "last.ckpt", ckpt)
            log.info("saved %s (epoch %d)", out / "last.ckpt", self.state.epoch)
            with reported_write(out / "metrics.csv", hint):
                write_metrics(out / "metrics.csv", self.state.history, self.stage.columns)

        on_main_rank(write)

    def _write_hint(self) -> str:
        """How to go on after a failed checkpoint write: an earlier last.ckpt stays intact."""
        if (self.cfg.out / "last.ckpt").exists():
            return f"free space, then continue the run with {self.cfg.resume_command}"
        return "free space, then start the run again"

    def save_position(self, position: dict, ranks: list[dict]) -> None:
        """A mid-epoch last.ckpt: the epoch's position and every rank's state (gathered)."""
        def write() -> None:
            path = self.cfg.out / "last.ckpt"
            with reported_write(path, self._write_hint()):
                save_checkpoint(path, self.checkpoint({**position, "ranks": ranks}))
            log.info("saved %s (epoch %d, %d iterations done)", path, position["epoch"],
                     position["iteration"])

        on_main_rank(write)

    def resume(self) -> None:
        cfg, s = self.cfg, self.stage
        path = Path(cfg.resume if isinstance(cfg.resume, str) else cfg.out / "last.ckpt")
        # rank 0 reads it and sends it on: other machines need no copy of the run folder
        ckpt = broadcast_object(load_checkpoint(path, allow_pickle=cfg.allow_pickle)
                                if is_main() else None)
        check_resumable(ckpt, path)
        load_model_state(s.net, ckpt["model"], path, network_of(ckpt, cfg.config))
        try:  # the same network with another optimizer or scheduler (e.g. another stage's)
            s.optimizer.load_state_dict(ckpt["optimizer"])
            s.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: its optimizer/scheduler state does not fit this run's "
                            f"({msg})") from None
        if s.scaler.is_enabled() and "scaler" in ckpt:
            s.scaler.load_state_dict(ckpt["scaler"])
        params = dict(s.net.named_parameters())
        for name in ckpt.get("grads", []):
            params[name].grad = torch.zeros_like(params[name])
        s.load_state_dict(ckpt)
        best = ckpt["best_score"] if "best_score" in ckpt else ckpt["best_miou"]  # older runs
        self.state = RunState(ckpt["epoch"], best, ckpt.get("best_epoch"), ckpt["history"],
                              ckpt.get("position"))
        pos = self.state.position
        where = (f"the end of epoch {ckpt['epoch']}" if pos is None else
                 f"epoch {pos['epoch']}, iteration {pos['iteration']}")
        log.info("resumed from %s at %s", path, where)
        if pos is not None and len(pos["ranks"]) != rank_world()[1]:
            raise UserError(f"{path} was saved mid-epoch by {len(pos['ranks'])} process(es); "
                            f"resume it with as many (this run has {rank_world()[1]})")
        if is_main():
            reconcile_best(cfg.out / "best.ckpt", ckpt, cfg.allow_pickle)
            # a run stopped between last.ckpt and metrics.csv left the table an epoch behind
            write_metrics(cfg.out / "metrics.csv", self.state.history, s.columns)

    # -- the loop

    def fit(self) -> RunState:
        cfg = self.cfg
        if cfg.resume:
            self.resume()
        world = rank_world()[1]
        log.info("device %s x %d process(es), %d training images%s, %d iterations per epoch, "
                 "epochs %d..%d, run folder %s", cfg.device, world, len(self.stage.train_set),
                 " (split among the processes)" if world > 1 else "", self._iters_per_epoch(),
                 self._first_epoch(), cfg.max_epochs - 1, cfg.out)
        if cfg.tblog_dir and is_main():
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a killed run logged after the checkpoint resumed
            self.writer = SummaryWriter(cfg.tblog_dir, purge_step=self._global_step())
        try:
            with self.signals:
                for ep in range(self._first_epoch(), cfg.max_epochs):
                    self.train_epoch(ep)
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.state

    def _first_epoch(self) -> int:
        pos = self.state.position
        return self.state.epoch + 1 if pos is None else pos["epoch"]

    def _global_step(self) -> int:
        pos, n = self.state.position, self._iters_per_epoch()
        if pos is None:
            return (self.state.epoch + 1) * n
        return pos["epoch"] * n + pos["iteration"]

    def _iters_per_epoch(self) -> int:
        per_rank = -(-len(self.stage.train_set) // rank_world()[1])
        return per_rank // self.cfg.batch_size

    def train_epoch(self, ep: int) -> None:
        cfg, s = self.cfg, self.stage
        rank, world = rank_world()
        pos, self.state.position = self.state.position, None
        seed_everything(cfg.seed, ep, rank)
        epoch_state = s.begin_epoch(ep)
        done = 0 if pos is None else pos["iteration"]
        total = self._iters_per_epoch()
        loader = epoch_loader(s.train_set, ep, cfg.batch_size, cfg.seed, cfg.num_workers,
                              s.collate_fn, skip=done)
        # the iterator first: it may draw its workers' seed from the global RNG at the epoch
        # start (under torchrun), before the random states are restored to mid-epoch ones
        batches = iter(loader)
        sums, n = np.zeros(len(s.loss_columns)), 0
        lr, spent = s.optimizer.param_groups[0]["lr"], 0.0  # the rate this epoch trains with
        if pos is not None:  # mid-epoch: this rank's random states and sums where they were
            mine = pos["ranks"][rank]
            set_rng_state(mine["rng"])
            if hasattr(epoch_state, "load_state_dict"):
                epoch_state.load_state_dict(mine["epoch_state"])
            sums, n = np.asarray(mine["sums"], np.float64), mine["n"]
            lr, spent = pos["lr"], pos["seconds"]
        t0 = time.time() - spent
        bar = tqdm(batches, desc=f"epoch {ep}", leave=False, disable=not is_main(),
                   initial=done, total=total)
        for batch in bar:
            losses = s.step(s.module, batch, epoch_state)
            sums += [losses.get(k, 0.0) for k in s.loss_columns]
            n, done = n + 1, done + 1
            bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()})
            self._log_losses(ep, done, losses, total)
            stop = self._agree(self.signals.requested is not None)
            if stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                        and done < total):
                self._save_mid_epoch(ep, done, lr, time.time() - t0, epoch_state, sums, n)
            if stop:
                bar.close()
                self._stopped(ep, done)
        bar.close()
        means = all_reduce_sum(sums / max(n, 1), cfg.device) / world
        broadcast_buffers(s.net)  # validate (and save) rank 0's BN statistics on every rank
        res = s.end_epoch(ep)
        row = {"epoch": ep, "lr": lr, **dict(zip(s.loss_columns, map(float, means))),
               **res.row, "seconds": round(time.time() - t0, 1)}
        is_best = res.score > self.state.best_score
        st = self.state
        st.epoch, st.history = ep, st.history + [row]
        if is_best:
            st.best_score, st.best_epoch = res.score, ep
        log.info("epoch %d: %s (lr %.2e, %.0f s)", ep, res.summary, lr, row["seconds"])
        self._log_epoch(ep, row, res)
        self.save_epoch(is_best)
        if self._agree(self.signals.requested is not None):
            self._stopped(ep + 1, 0)

    def _agree(self, flag: bool) -> bool:
        """Whether any rank wants to stop (a signal may reach one rank only)."""
        if rank_world()[1] == 1:
            return flag
        return bool(all_reduce_sum(np.array([int(flag)]), self.cfg.device)[0])

    def _save_mid_epoch(self, ep: int, done: int, lr: float, seconds: float, epoch_state: Any,
                        sums: np.ndarray, n: int) -> None:
        mine = {"rng": get_rng_state(), "sums": sums.tolist(), "n": n,
                "epoch_state": (epoch_state.state_dict()
                                if hasattr(epoch_state, "state_dict") else None)}
        ranks = all_gather_object(mine)
        self.save_position({"epoch": ep, "iteration": done, "lr": lr, "seconds": seconds},
                           ranks)

    def _stopped(self, ep: int, done: int) -> None:
        name = signal.Signals(self.signals.requested or signal.SIGTERM).name
        where = f"epoch {ep}, iteration {done}" if done else f"the end of epoch {ep - 1}"
        msg = (f"stopped by {name} at {where}; {self.cfg.out / 'last.ckpt'} holds the run: "
               f"continue it with {self.cfg.resume_command}")
        log.warning(msg)
        raise TrainingStopped(msg, 128 + int(self.signals.requested or signal.SIGTERM))

    # -- logging

    def _log_losses(self, ep: int, done: int, losses: dict[str, float], total: int) -> None:
        every = self.cfg.log_every
        if not every or done % every:
            return
        log.info("epoch %d iter %d: %s", ep, done,
                 " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        if self.writer is not None:
            step = ep * total + done
            for k, v in losses.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/lr", self.stage.optimizer.param_groups[0]["lr"], step)

    def _log_epoch(self, ep: int, row: dict, res: EpochResult) -> None:
        if self.writer is None:
            return
        step = (ep + 1) * self._iters_per_epoch()
        for k, v in row.items():
            if k not in ("epoch", "seconds") and isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{k}", v, step)
        for name, curve in res.curves.items():  # one scalar series per epoch, x = threshold
            for t, v in curve.items():
                self.writer.add_scalar(f"{name}/epoch{ep:03d}", v, round(t * 100))
        self.stage.log_images(self.writer, ep)
        self.writer.flush()


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "history")


def check_resumable(ckpt: dict, path: Path) -> None:
    """One line when ``ckpt`` lacks what :meth:`Engine.resume` reads (e.g. a released or
    plain state dict given to ``--resume``: those are ``--weights``, METHOD.md D7)."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if "best_score" not in ckpt and "best_miou" not in ckpt:
        missing.append("best_score")
    if missing:
        keys = ", ".join(map(str, list(ckpt)[:8])) + (", ..." if len(ckpt) > 8 else "")
        raise UserError(f"{path} is not a training checkpoint of this trainer: it lacks "
                        f"{', '.join(missing)} (its keys: {keys}); to start from its weights "
                        f"use --weights instead of --resume")


def network_of(ckpt: dict, config: dict) -> str:
    """"a resnet18" / "a resnet18 (backbone_width 0.25, num_classes 21)": the network the
    checkpoint's saved config names, with the model options and the class count that differ
    from ``config`` (this run's)."""
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    there = saved.get("model")
    if not isinstance(there, dict) or "backbone" not in there:
        return "another network's"
    config = config if isinstance(config, dict) else {}
    here = config.get("model", {})
    diff = [f"{k} {there[k]}" for k in sorted(there)
            if k != "backbone" and not k.endswith("weights") and k in here
            and there[k] != here[k]]
    n_there, n_here = (c.get("data", {}).get("num_classes") for c in (saved, config))
    if n_there is not None and n_here is not None and n_there != n_here:
        diff.append(f"num_classes {n_there}")  # a run on the other data set (VOC / COCO)
    return f"a {there['backbone']}" + (f" ({', '.join(diff)})" if diff else "")


def reconcile_best(best_path: Path, last: dict, allow_pickle: bool = False) -> None:
    """Make ``best.ckpt`` agree with the best epoch ``last.ckpt`` records, or warn in one line.

    Runs of earlier versions wrote last.ckpt first, so a kill in between left best.ckpt at an
    older epoch for good. Now best.ckpt comes first, and a kill in between leaves it one epoch
    ahead of last.ckpt; that epoch is trained again and decides anew. Either way, when
    last.ckpt is itself the best epoch, best.ckpt is rewritten from it (the two files then hold
    the same state); otherwise the best model is not on disk, and a warning says so.
    """
    want = last.get("best_epoch")
    if want is None:  # no epoch beat the floor yet, or a checkpoint without the record
        return
    have = (load_checkpoint(best_path, allow_pickle=allow_pickle).get("epoch")
            if best_path.exists() else None)
    if have == want:
        return
    held = "is missing" if have is None else f"holds epoch {have}"
    if want == last["epoch"] and last.get("position") is None:
        save_checkpoint(best_path, last)
        log.warning("%s %s, but the best epoch is %d, the one last.ckpt holds: rewrote it from "
                    "last.ckpt", best_path, held, want)
    elif have is not None and have > last["epoch"]:
        log.warning("%s holds epoch %d, after last.ckpt's epoch %d (the run stopped between the "
                    "two writes): epoch %d is trained again and replaces it if it is still best",
                    best_path, have, last["epoch"], have)
    else:
        log.warning("%s %s, but last.ckpt records epoch %d (score %.2f) as the best, and that "
                    "model is not on disk: best.ckpt does not match metrics.csv", best_path, held,
                    want, last["best_score"])


# ------------------------------------------------------------------------- a stage's run


def resume_command(script: str, argv: list[str]) -> str:
    """The command line that continues a run started by ``script argv``: the same with
    ``--resume`` instead of ``--overwrite`` (under torchrun: the same launcher)."""
    argv = [a for a in argv if a not in ("--overwrite", "--resume")]
    return " ".join(shlex.quote(a) for a in ["python", script, *argv, "--resume"])


def engine_config(args: Any, device: torch.device, out: Path, *, max_epochs: int,
                  batch_size: int, log_every: int, checkpoint_every: int) -> EngineConfig:
    """An :class:`EngineConfig` from a resolved config: the stage names its own epoch, batch
    and logging keys; seed, workers, TensorBoard, resume and the saved config are common."""
    return EngineConfig(out=out, max_epochs=max_epochs, batch_size=batch_size,
                        num_workers=args.num_workers, seed=args.seed, device=device,
                        log_every=log_every, checkpoint_every=checkpoint_every,
                        tblog_dir=args.tblog_dir, config=args.config_dict, resume=args.resume,
                        resume_command=getattr(args, "resume_command",
                                               "the same training command with --resume"))


def preflight_on_rank0(check: Callable[[], str]) -> str:
    """Rank 0 runs ``check`` (all input problems at once, METHOD.md 12.7), every rank raises
    its problems (so none waits for a peer that stopped); returns its summary."""
    result: tuple[bool, Any] | None = None
    if is_main():
        try:
            result = (True, check())
        except PreflightError as e:
            result = (False, e.problems)
        except UserError as e:
            result = (False, [str(e)])
    ok, value = broadcast_object(result)
    if not ok:
        raise PreflightError(value)
    return value


def run_stage(args: Any, out: Path, preflight: Callable[[], str],
              build_stage: Callable[[torch.device, ExitStack], Stage],
              config: Callable[[torch.device], EngineConfig], *, markers: Sequence[str],
              outputs: Sequence[str]) -> tuple[Stage, RunState]:
    """The skeleton of every training entry point (in every process of a torchrun launch):
    threads and device, ``preflight`` on rank 0 before anything is written or computed, the
    log file, the run folder claimed (one run at a time, no fresh run over a finished one:
    ``markers`` / ``outputs`` as :func:`~tool.common.runfolder.claim_run_folder`), then
    ``build_stage(device, stack)`` (``stack`` holds resources such as worker pools for the
    run's length) trained by the :class:`Engine`. Returns the stage and its final state."""
    configure_threads(args.threads)
    if args.allow_pickle:
        allow_unsafe_pickle()
    device = local_device(resolve_device(args.device))
    init_distributed(device)
    try:
        summary = preflight_on_rank0(preflight)
        setup_logging(out / "train.log" if is_main() else None, quiet=not is_main())
        with claim_run_folder(out, resume=bool(args.resume),
                              overwrite=getattr(args, "overwrite", False),
                              markers=markers, outputs=outputs), ExitStack() as stack:
            log.info("%s", summary)  # only now: a refused run leaves its folder untouched
            stage = build_stage(device, stack)
            return stage, Engine(stage, config(device)).fit()
    finally:
        cleanup_distributed()
