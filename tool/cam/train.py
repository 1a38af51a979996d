"""Stage 1 training (METHOD.md 5): epochs of ``train_step``, per-epoch validation, the LR schedule
on the best mIoU, ``camT`` following the best threshold, checkpoints and ``metrics.csv``.

Under ``torchrun --nproc_per_node N`` the same loop runs in N processes: DDP averages the
gradients, a DistributedSampler splits each epoch, the ranks split the validation list and sum
their confusion counts, and rank 0 alone writes logs, metrics and checkpoints.
"""
from __future__ import annotations

import logging
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tool.cam.build import (
    build_loaders,
    build_model,
    check_batch_size,
    check_weights_given,
    ddp_model,
    epoch_loader,
)
from tool.cam.step import StepContext, TrainLosses, train_step
from tool.cam.validate import validate
from tool.common.checkpoint import load_checkpoint, save_checkpoint
from tool.common.dist import (
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_main,
    local_device,
    rank_world,
)
from tool.common.metrics import LOSS_COLUMNS, write_metrics
from tool.common.runfolder import claim_run_folder
from tool.common.runtime import epoch_generators, resolve_device, seed_everything, setup_logging
from tool.crf import CRFPool
from tool.eval.evaluation import parse_t_range

log = logging.getLogger("plmix")


# what marks a run in the session folder, and what --overwrite removes (best.ckpt alone is no
# run: a run killed in its first epoch between writing it and last.ckpt cannot be resumed)
RUN_MARKERS = ("last.ckpt", "metrics.csv")
RUN_OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.csv")


def run(args: Namespace) -> dict:
    """Train (in every process of a torchrun launch); returns the final state summary."""
    check_weights_given(args)
    device = local_device(resolve_device(args.device))
    init_distributed(device)
    out = Path(args.session_name)
    try:
        setup_logging(out / "train.log" if is_main() else None, quiet=not is_main())
        # before any compute: one run at a time, and no fresh run over a finished one
        with claim_run_folder(out, resume=bool(args.resume),
                              overwrite=getattr(args, "overwrite", False),
                              markers=RUN_MARKERS, outputs=RUN_OUTPUTS):
            return _train(args, device, out)
    finally:
        cleanup_distributed()


def _train(args: Namespace, device: torch.device, out: Path) -> dict:
    train_ds, val_ds = build_loaders(args)
    check_batch_size(args, len(train_ds))
    seed_everything(args.seed)  # the same initial weights for a fresh run and a resumed one
    net = build_model(args, device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.wt_dec)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=args.lr_factor, patience=0, min_lr=args.min_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=net.amp_dtype == torch.float16)
    # the released floor (MaxmIou) applies to the GT mIoU; the GT-free mAP starts from 0
    state = {"epoch": -1, "camT": args.camT, "history": [], "best_epoch": None,
             "best_score": args.MaxmIou if args.select_with_gt else 0.0}
    if args.resume:  # every rank continues from the same checkpoint
        state = resume(args, net, opt, sched, scaler)
    model = ddp_model(TrainLosses(net), device, args.sync_bn)
    rank, world = rank_world()
    log.info("device %s x %d process(es), %d train images, %d val images%s, epochs %d..%d, "
             "run folder %s", device, world, len(train_ds), len(val_ds),
             " per process" if world > 1 else "", state["epoch"] + 1, args.max_epoches - 1, out)
    thresholds = parse_t_range(args.val_t_range)
    val_loader = DataLoader(val_ds, batch_size=None, num_workers=args.num_workers)
    with CRFPool(args.crf_workers if args.crf and args.plmix else 0) as pool:
        for ep in range(state["epoch"] + 1, args.max_epoches):
            t0 = time.time()
            seed_everything(args.seed, ep, rank)
            ctx = StepContext(args, ep, state["camT"], *epoch_generators(args.seed, ep, rank),
                              pool, scaler)
            lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
            means = train_epoch(model, opt, epoch_loader(train_ds, args, ep), ctx, device)
            broadcast_buffers(net)  # validate (and save) rank 0's BN statistics on every rank
            val = validate(net, val_loader, args.gt if args.select_with_gt else None,
                           thresholds, device, progress=is_main())
            score = selection_score(val, args.select_with_gt)
            sched.step(score)  # the same summed counts, so the same step on every rank
            row = {"epoch": ep, "lr": lr, **means, "camT": state["camT"],
                   "best_t": val.best_t, "miou": val.best_miou, "val_map": val.cls_map,
                   "seconds": round(time.time() - t0, 1)}
            # released protocol: the best validation threshold becomes the next epoch's camT
            camT = val.best_t if args.select_with_gt else state["camT"]
            state.update(epoch=ep, camT=camT, history=state["history"] + [row])
            log.info("epoch %d: %s, val mAP %.2f%% (lr %.2e, %.0f s)", ep,
                     "no GT read" if val.miou is None else
                     f"mIoU {val.best_miou:.2f}% at t={val.best_t:.2f}", val.cls_map, lr,
                     row["seconds"])
            end_of_epoch(out, args, net, opt, sched, scaler, state, score)
    return {"best_score": state["best_score"], "camT": state["camT"], "session": str(out)}


def selection_score(val, with_gt: bool) -> float:
    """What steps the LR plateau and picks best.ckpt: the best-threshold mIoU on the GT masks
    (released protocol), or the image-level mAP, which needs image labels only (GT-free)."""
    return val.best_miou if with_gt else val.cls_map


def train_epoch(model, opt, loader: DataLoader, ctx: StepContext,
                device: torch.device) -> dict[str, float]:
    """Run one epoch; returns the epoch mean of every loss column (0 when inactive), averaged
    over the ranks of a DDP run."""
    sums = np.zeros(len(LOSS_COLUMNS))
    bar = tqdm(loader, desc=f"epoch {ctx.epoch}", leave=False, disable=not is_main())
    n = 0
    for it, batch in enumerate(bar):
        losses = train_step(model, opt, batch, ctx, device)
        sums += [losses.get(k, 0.0) for k in LOSS_COLUMNS]
        n += 1
        bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()})
        if (it + 1) % ctx.args.log_every == 0:
            log.info("epoch %d iter %d: %s", ctx.epoch, it + 1,
                     " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    means = all_reduce_sum(sums / max(n, 1), device) / rank_world()[1]
    return {k: float(v) for k, v in zip(LOSS_COLUMNS, means)}


def end_of_epoch(out: Path, args: Namespace, net, opt, sched, scaler, state: dict,
                 score: float) -> None:
    """Rank 0 writes best.ckpt when the selection score beats the best so far (> floor), then
    last.ckpt, then metrics.csv; the other ranks wait until the files are complete.

    The order makes a kill between two writes harmless: last.ckpt (which records the best
    epoch) never claims a best.ckpt that is not on disk, and metrics.csv never lists an epoch
    that --resume would not find in last.ckpt.
    """
    is_best = score > state["best_score"]
    if is_best:
        state.update(best_score=score, best_epoch=state["epoch"])
    if is_main():
        ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": state["epoch"], "camT": state["camT"],
                "best_score": state["best_score"], "best_epoch": state["best_epoch"],
                "selection": "val_miou" if args.select_with_gt else "val_map",
                "history": state["history"], "config": args.config_dict}
        if scaler.is_enabled():
            ckpt["scaler"] = scaler.state_dict()
        if is_best:
            save_checkpoint(out / "best.ckpt", ckpt)
            log.info("new best %s %.2f%%: saved %s", "mIoU" if args.select_with_gt else "mAP",
                     score, out / "best.ckpt")
        save_checkpoint(out / "last.ckpt", ckpt)
        log.info("saved %s (epoch %d)", out / "last.ckpt", state["epoch"])
        write_metrics(out / "metrics.csv", state["history"])
    barrier()


def resume(args: Namespace, net, opt, sched, scaler) -> dict:
    path = Path(args.resume if isinstance(args.resume, str) else
                Path(args.session_name) / "last.ckpt")
    # rank 0 reads it and sends it on: other machines need no copy of the run folder
    ckpt = broadcast_object(load_checkpoint(path) if is_main() else None)
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    log.info("resumed from %s at the end of epoch %d (camT %.2f)", path, ckpt["epoch"],
             ckpt["camT"])
    if is_main():
        out = Path(args.session_name)
        reconcile_best(out / "best.ckpt", ckpt)
        # a run stopped between last.ckpt and metrics.csv left the table an epoch behind
        write_metrics(out / "metrics.csv", ckpt["history"])
    best = ckpt["best_score"] if "best_score" in ckpt else ckpt["best_miou"]  # older runs
    return {"best_score": best, "best_epoch": ckpt.get("best_epoch"),  # None: older runs
            **{k: ckpt[k] for k in ("epoch", "camT", "history")}}


def reconcile_best(best_path: Path, last: dict) -> None:
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
    have = load_checkpoint(best_path).get("epoch") if best_path.exists() else None
    if have == want:
        return
    held = "is missing" if have is None else f"holds epoch {have}"
    if want == last["epoch"]:
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
