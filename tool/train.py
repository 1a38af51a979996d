"""Stage 1 training (SPEC 5): epochs of ``train_step``, per-epoch validation, the LR schedule
on the best mIoU, ``camT`` following the best threshold, checkpoints and ``metrics.csv``."""
from __future__ import annotations

import logging
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.datasets import MultiScaleDataset, TrainDataset, collate_train
from data.voc import load_cls_labels, load_img_name_list
from net.cam_net import CAMNet
from net.weights import load_cam_weights
from tool.checkpoint import load_checkpoint, rng_states, save_checkpoint
from tool.crf import CRFPool
from tool.errors import UserError
from tool.evaluation import parse_t_range
from tool.metrics import LOSS_COLUMNS, write_metrics
from tool.runtime import epoch_generators, resolve_device, seed_everything, setup_logging
from tool.train_step import StepContext, train_step
from tool.validate import validate

log = logging.getLogger("plmix")


def check_weights_given(args: Namespace) -> None:
    """Fail at once, naming the file to get, when the config trains from ImageNet weights."""
    from net.backbones import weights_hint
    from net.weights import no_weights

    if args.imagenet_required and no_weights(args.backbone_weights) and no_weights(args.weights):
        raise UserError(f"backbone {args.backbone} trains from ImageNet weights: pass "
                        f"--backbone_weights PATH to a local copy of {weights_hint(args.backbone)}"
                        " (or --imagenet_required False to train from scratch)")


def build_model(args: Namespace, device: torch.device) -> CAMNet:
    """The CAM network of the config, with ImageNet weights and/or CAM-net weights."""
    kw = {"trainable_bn": args.trainable_bn}
    if args.backbone_strides:
        kw["strides"] = tuple(args.backbone_strides)
    if args.backbone_width != 1.0:
        kw["width"] = args.backbone_width
    model = CAMNet(args.backbone, num_classes=21, backbone_weights=args.backbone_weights, **kw)
    if args.weights:
        load_cam_weights(model, args.weights)
    return model.to(device)


def build_loaders(args: Namespace) -> tuple[TrainDataset, MultiScaleDataset]:
    cls_labels = load_cls_labels(args.cls_labels)
    train_ds = TrainDataset(
        load_img_name_list(args.train_list), args.voc12_root, cls_labels,
        crop_size=args.crop_size, view_size=args.view_size,
        resize_long=tuple(args.resize_long), view_min_side=args.view_min_side,
        seed=args.seed, jitter=tuple(args.jitter),
        with_views=args.pixpro_start < args.max_epoches)
    val_ds = MultiScaleDataset(load_img_name_list(args.val_list), args.voc12_root, cls_labels,
                               scales=args.val_scales)
    return train_ds, val_ds


def epoch_loader(ds: TrainDataset, args: Namespace, epoch: int) -> DataLoader:
    """Shuffle order from (seed, epoch): a resumed run sees the same order."""
    ds.set_epoch(epoch)
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([args.seed, epoch, 0]).generate_state(1)[0]))
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      num_workers=args.num_workers, generator=g, collate_fn=collate_train,
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def run(args: Namespace) -> dict:
    """Train; returns the final state summary (best mIoU, camT, run folder)."""
    check_weights_given(args)
    out = Path(args.session_name)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out / "train.log")
    device = resolve_device(args.device)
    train_ds, val_ds = build_loaders(args)
    if len(train_ds) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size} exceeds the {len(train_ds)} images "
                        f"of {args.train_list}")
    seed_everything(args.seed)  # the same initial weights for a fresh run and a resumed one
    model = build_model(args, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.wt_dec)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=args.lr_factor, patience=0, min_lr=args.min_lr)
    state = {"epoch": -1, "camT": args.camT, "best_miou": args.MaxmIou, "history": []}
    if args.resume:
        state = resume(args, model, opt, sched)
    log.info("device %s, %d train / %d val images, epochs %d..%d, run folder %s", device,
             len(train_ds), len(val_ds), state["epoch"] + 1, args.max_epoches - 1, out)
    thresholds = parse_t_range(args.val_t_range)
    val_loader = DataLoader(val_ds, batch_size=None, num_workers=args.num_workers)
    with CRFPool(args.crf_workers if args.crf and args.plmix else 0) as pool:
        for ep in range(state["epoch"] + 1, args.max_epoches):
            t0 = time.time()
            seed_everything(args.seed, ep)
            rng, gen = epoch_generators(args.seed, ep)
            ctx = StepContext(args, ep, state["camT"], rng, gen, pool)
            lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
            means = train_epoch(model, opt, epoch_loader(train_ds, args, ep), ctx, device)
            val = validate(model, val_loader, args.gt, thresholds, device)
            sched.step(val.best_miou)
            row = {"epoch": ep, "lr": lr, **means,
                   "camT": state["camT"], "best_t": val.best_t, "miou": val.best_miou,
                   "seconds": round(time.time() - t0, 1)}
            state.update(epoch=ep, camT=val.best_t, history=state["history"] + [row])
            log.info("epoch %d: mIoU %.2f%% at t=%.2f (lr %.2e, %.0f s)", ep, val.best_miou,
                     val.best_t, lr, row["seconds"])
            end_of_epoch(out, args, model, opt, sched, state, val.best_miou)
    return {"best_miou": state["best_miou"], "camT": state["camT"], "session": str(out)}


def train_epoch(model, opt, loader: DataLoader, ctx: StepContext,
                device: torch.device) -> dict[str, float]:
    """Run one epoch; returns the epoch mean of every loss column (0 when inactive)."""
    sums = dict.fromkeys(LOSS_COLUMNS, 0.0)
    bar = tqdm(loader, desc=f"epoch {ctx.epoch}", leave=False)
    n = 0
    for it, batch in enumerate(bar):
        losses = train_step(model, opt, batch, ctx, device)
        for k, v in losses.items():
            sums[k] += v
        n += 1
        bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()})
        if (it + 1) % ctx.args.log_every == 0:
            log.info("epoch %d iter %d: %s", ctx.epoch, it + 1,
                     " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    return {k: v / max(n, 1) for k, v in sums.items()}


def end_of_epoch(out: Path, args: Namespace, model, opt, sched, state: dict,
                 miou: float) -> None:
    """metrics.csv, last.ckpt, and best.ckpt when the mIoU beats the best so far (> floor)."""
    is_best = miou > state["best_miou"]
    if is_best:
        state["best_miou"] = miou
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": state["epoch"], "camT": state["camT"],
            "best_miou": state["best_miou"], "history": state["history"],
            "rng": rng_states(), "config": args.config_dict}
    write_metrics(out / "metrics.csv", state["history"])
    save_checkpoint(out / "last.ckpt", ckpt)
    if is_best:
        save_checkpoint(out / "best.ckpt", ckpt)
        log.info("new best mIoU %.2f%%: saved %s", miou, out / "best.ckpt")


def resume(args: Namespace, model, opt, sched) -> dict:
    path = Path(args.resume if isinstance(args.resume, str) else
                Path(args.session_name) / "last.ckpt")
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    log.info("resumed from %s at the end of epoch %d (camT %.2f)", path, ckpt["epoch"],
             ckpt["camT"])
    return {k: ckpt[k] for k in ("epoch", "camT", "best_miou", "history")}
