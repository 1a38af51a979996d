"""Stage 3 training (METHOD.md 14.3-14.5): a segmentation network on the stage-2 pseudo labels,
on the engine (``tool.common.engine``): ``SegStage`` and ``run`` (``train_seg.py``).

- ``muscle_b7`` (MuSCLe): cross-entropy on the pseudo-label argmax + ``lamb`` x BEACON on the
  upsampled features, Adam over every parameter, gradient clipping at total norm
  ``seg_clip_norm``, ReduceLROnPlateau on each epoch's val mIoU (a fraction, S12).
- ``deeplabv3_resnet101`` (the comparator, METHOD.md 14.7.2): cross-entropy + ``seg_aux_weight``
  x the aux head's, SGD with momentum, the aux head at 10x, poly decay every iteration.
- ``toy``: MuSCLe's recipe on a small network (the demo).
Per-epoch validation (S23): one scale, no flip, optional 1-iteration CRF, mIoU over
``seg_val_list``; the reported model is the last epoch (``last.ckpt``), ``best.ckpt`` holds
the best validated one. BEACON draws its samples from a ``random.Random`` per (seed, epoch,
rank), kept in mid-epoch checkpoints.
"""
from __future__ import annotations

import logging
import random
from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.voc import image_path, load_image, load_img_name_list, load_mask
from net.seg_net import SegNet
from tool.common.dist import all_reduce_sum, rank_world, shard, wrap_ddp
from tool.common.engine import (
    EngineConfig,
    EpochResult,
    Stage,
    engine_config,
    iterations_per_epoch,
    run_stage,
)
from tool.common.runtime import seed_everything
from tool.eval.evaluation import confusion_png, iou_from_confusion
from tool.seg.losses import beacon_loss, deeplab_loss, seg_ce_loss
from tool.seg.msf import VAL_CRF_ITERS, crf_refine, predict_label

log = logging.getLogger("plmix")

LOSS_COLUMNS = ("loss", "loss_ce", "loss_beacon", "loss_aux")
COLUMNS = ("epoch", "lr", *LOSS_COLUMNS, "val_miou", "seconds")
RUN_MARKERS = ("last.ckpt", "metrics.csv")
RUN_OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.csv")
DEEPLAB = "deeplabv3_resnet101"


class TrainForward(nn.Module):
    """``net.forward_train`` as a module's ``forward``, for DistributedDataParallel (it wraps
    ``forward`` only); checkpoints hold ``net`` itself, so its keys stay MuSCLe's."""

    def __init__(self, net: SegNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.forward_train(x)


def build_seg_net(args: Namespace) -> SegNet:
    """SegNet of ``seg_arch`` with its ImageNet weights (``seg_backbone_weights``) or, for the
    toy, its trunk from the stage-1 network (``seg_init_from_cam``: the toy has no ImageNet)."""
    from net.weights import no_weights
    from tool.common.checkpoint import init_from_stage1

    net = SegNet(args.seg_arch, num_classes=args.num_classes,
                 backbone_weights=args.seg_backbone_weights,
                 output_stride=args.seg_output_stride, aux_loss=bool(args.aux_loss),
                 toy_width=args.seg_toy_width)
    if not no_weights(args.seg_init_from_cam):
        init_from_stage1(net.backbone, args.seg_init_from_cam, "--seg_init_from_cam",
                         f"the {args.seg_arch} trunk", bool(args.allow_pickle))
    return net


def lr_groups(net: SegNet, trunk_mult: float, aux_mult: float) -> list[dict[str, Any]]:
    """Parameter groups with their lr factors, heads (factor 1) first so that the logged lr is
    ``seg_lr``: the trunk (``backbone.*``) at ``trunk_mult``, DeepLab's aux head at
    ``aux_mult``. Factors of 1 merge into one group (MuSCLe's single group)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in net.named_parameters():
        if ".aux_classifier." in f".{name}":
            factor = aux_mult
        else:
            factor = trunk_mult if name.startswith("backbone.") else 1.0
        groups.setdefault(float(factor), []).append(p)
    order = sorted(groups, key=lambda f: (f != 1.0, f))
    return [{"params": groups[f], "lr_factor": f} for f in order]


def build_optimizer(args: Namespace, net: SegNet, steps: int
                    ) -> tuple[torch.optim.Optimizer, Any]:
    """(optimizer, scheduler) of METHOD.md 14.5.1 (adam, plateau) or 14.7.2 (sgd, poly);
    ``steps``: iterations of the whole run (poly). ``seg_trunk_lr_mult`` scales the trunk's
    lr (1 = as released), the aux head learns at 10x (torchvision's reference recipe)."""
    groups = lr_groups(net, args.seg_trunk_lr_mult, 10.0)
    for g in groups:
        g["lr"] = args.seg_lr * g["lr_factor"]
    if args.seg_optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=args.seg_lr,
                                                      weight_decay=args.seg_wt_dec)
    else:
        opt = torch.optim.SGD(groups, lr=args.seg_lr, momentum=args.seg_momentum,
                              weight_decay=args.seg_wt_dec)
    if args.seg_lr_policy == "poly":
        total, power = max(steps, 1), args.seg_poly_power
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: max(1 - it / total, 0.0) ** power)
    else:  # each group's floor scales with its lr, so a low trunk lr is never raised to it
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=args.seg_lr_factor, patience=0, cooldown=0,
            min_lr=[args.seg_min_lr * g["lr_factor"] for g in groups])
    return opt, sched


class BeaconRng:
    """BEACON's ``random.Random`` of one epoch and rank, with a state for mid-epoch checkpoints."""

    def __init__(self, seed: int, epoch: int, rank: int) -> None:
        self.rng = random.Random(int(np.random.SeedSequence([seed, epoch, rank, 7])
                                     .generate_state(1)[0]))

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = self.rng.getstate()
        return {"version": version, "state": list(state), "gauss": gauss}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rng.setstate((d["version"], tuple(d["state"]), d["gauss"]))


@torch.no_grad()
def validate(net: SegNet, names: list[str], voc12_root: str, gt_dir: str,
             device: torch.device, crf: bool = False) -> tuple[float, np.ndarray]:
    """Per-epoch validation (METHOD.md 14.5.3, S23): each image at scale 1, no flip, softmax,
    optionally a 1-iteration CRF, argmax; this rank's share under torchrun, the confusion
    summed over the ranks. The class count C is the network's (``net.num_classes``: 21 VOC,
    81 COCO). Returns (mIoU in percent, per-class IoU (C,) in percent)."""
    from data.transforms import normalize

    was_training = net.training
    net.eval()
    n = net.num_classes
    conf = np.zeros((1, n, n + 1), np.int64)  # confusion_png's layout: [_, gt, pred | none]
    for name in shard(names):
        img = load_image(image_path(voc12_root, name))
        x = torch.from_numpy(normalize(img)).permute(2, 0, 1)[None].float().to(device)
        probs = F.softmax(net(x), dim=1)[0].cpu().numpy()
        if crf:
            probs = crf_refine(np.asarray(img, np.uint8), probs, n_iters=VAL_CRF_ITERS)
        conf += confusion_png(predict_label(probs), load_mask(Path(gt_dir) / f"{name}.png"),
                              name, num_classes=n)
    net.train(was_training)
    conf = all_reduce_sum(conf, device)
    iou = iou_from_confusion(conf[0]) * 100
    return float(iou.mean()), iou


class SegStage(Stage):
    """A segmentation network on the pseudo labels (METHOD.md 14.3-14.5, 14.7.2)."""

    columns, loss_columns = COLUMNS, LOSS_COLUMNS

    def __init__(self, args: Namespace, device: torch.device) -> None:
        from data.seg_dataset import SegTrainDataset

        self.args, self.device = args, device
        self.train_set = SegTrainDataset(
            args.seg_train_list, args.voc12_root, args.mask_root, mask_format=args.mask_type,
            cls_labels=args.cls_labels, crop_size=args.seg_crop_size,
            scale_range=tuple(args.seg_scale_range), jitter=tuple(args.seg_jitter),
            pad_label=args.pad_label, seed=args.seg_seed, num_classes=args.num_classes)
        per_epoch = iterations_per_epoch(len(self.train_set), args.seg_batch_size,
                                         "--seg_batch_size", args.seg_train_list)
        seed_everything(args.seg_seed)  # the same initial heads for a fresh and a resumed run
        self.net = build_seg_net(args).to(device)
        self.optimizer, self.scheduler = build_optimizer(args, self.net,
                                                         per_epoch * args.seg_num_epoches)
        self.poly = args.seg_lr_policy == "poly"
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.module = wrap_ddp(TrainForward(self.net))
        self.val_names = load_img_name_list(args.seg_val_list)

    def begin_epoch(self, epoch: int) -> BeaconRng:
        return BeaconRng(self.args.seg_seed, epoch, rank_world()[0])

    def step(self, model: nn.Module, batch: dict, epoch_state: BeaconRng) -> dict[str, float]:
        a, dev = self.args, self.device
        model.train()
        img = batch["img"].to(dev, non_blocking=True)
        target = batch["target"].to(dev, non_blocking=True)
        out = model(img)
        zero = out["out"].new_zeros(())
        parts = {"loss_ce": seg_ce_loss(out["out"], target), "loss_beacon": zero,
                 "loss_aux": zero}
        if out.get("aux") is not None:
            total = deeplab_loss(out["out"], out["aux"], target, a.seg_aux_weight)
            parts["loss_aux"] = seg_ce_loss(out["aux"].detach(), target)
        else:
            total = parts["loss_ce"]
        if a.lamb > 0 and "dense_ft" in out:
            label_bg = F.pad(batch["label"].to(dev), (1, 0), value=1.0)
            beacon, _ = beacon_loss(out["out"], out["dense_ft"], batch["soft"].to(dev),
                                    label_bg, step=a.beacon_step, k=a.beacon_k,
                                    beta=a.beacon_beta, rng=epoch_state.rng)
            if beacon is not None:
                parts["loss_beacon"] = beacon
                total = total + a.lamb * beacon
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if a.seg_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), a.seg_clip_norm)
        self.optimizer.step()
        if self.poly:
            self.scheduler.step()
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    def end_epoch(self, epoch: int) -> EpochResult:
        a = self.args
        miou, _ = validate(self.net, self.val_names, a.voc12_root, a.gt, self.device,
                           crf=bool(a.seg_val_crf))
        if not self.poly and a.val_drives_scheduler:
            self.scheduler.step(miou / 100)  # MuSCLe steps it with a fraction (S12)
        return EpochResult(miou, {"val_miou": round(miou, 4)},
                           f"val mIoU {miou:.2f} on {len(self.val_names)} images")


def preflight(args: Namespace) -> str:
    """Every check of stage 3's inputs (METHOD.md 12.7) in one PreflightError; returns a
    summary for the log."""
    from data.description import describe
    from data.preflight import DatasetCheck
    from data.seg_dataset import check_seg_labels
    from tool.common.preflight import Problems, check_input_files, check_output_folder

    problems = Problems()
    check_input_files(problems, args, ("seg_backbone_weights", "seg_init_from_cam"))
    data = DatasetCheck(problems, args.voc12_root, args.cls_labels,
                        num_fg=describe(args.num_classes).num_fg)
    names = data.split(args.seg_train_list)
    data.split(args.seg_val_list, gt_dir=args.gt)
    data.finish()
    if names:
        for line in check_seg_labels(names, args.voc12_root, args.mask_root, args.mask_type,
                                     image_sizes=data.sizes, num_classes=args.num_classes):
            problems.add(line)
    check_output_folder(problems, args.seg_session, "--seg_session",
                        files=(*RUN_OUTPUTS, "train.log"))
    problems.raise_if_any()
    return (f"preflight: {len(data.sizes)} images, {args.mask_type} pseudo labels in "
            f"{args.mask_root} checked")


def seg_engine_config(args: Namespace, device: torch.device, out: Path) -> EngineConfig:
    cfg = engine_config(args, device, out, max_epochs=args.seg_num_epoches,
                        batch_size=args.seg_batch_size, log_every=args.seg_log_every,
                        checkpoint_every=args.seg_checkpoint_every)
    return replace(cfg, seed=args.seg_seed, allow_pickle=bool(args.allow_pickle),
                   tblog_dir=str(Path(args.tblog_dir) / "seg") if args.tblog_dir else None)


def run(args: Namespace) -> dict:
    """``train_seg.py``: stage 3 in ``seg_session`` (every process of a torchrun launch).
    Returns the final state summary."""
    out = Path(args.seg_session)
    _, state = run_stage(args, out, lambda: preflight(args),
                         lambda device, stack: SegStage(args, device),
                         lambda device: seg_engine_config(args, device, out),
                         markers=RUN_MARKERS, outputs=RUN_OUTPUTS)
    last = state.history[-1] if state.history else {}
    return {"session": str(out), "epochs": state.epoch + 1, "val_miou": last.get("val_miou"),
            "best_epoch": state.best_epoch}
