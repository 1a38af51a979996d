"""What a run is made of: the CAM network of the config and the weights it starts from (ImageNet
for training, a trained checkpoint for inference), the data sets, and the per-epoch loader (a
DistributedSampler under torchrun, so ``--batch_size`` is per process)."""
from __future__ import annotations

import logging
import os
from argparse import Namespace

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.datasets import MultiScaleDataset, TrainDataset, collate_train
from data.description import DESCRIPTIONS, describe
from data.voc import load_cls_labels, load_img_name_list
from net.cam_net import CAMNet
from net.norm import sync_batchnorm
from net.weights import load_cam_weights, no_weights, state_dict_of
from tool.common import engine
from tool.common.checkpoint import read_checkpoint
from tool.common.dist import is_distributed, rank_world, shard, wrap_ddp
from tool.common.errors import UserError
from tool.common.runtime import amp_dtype


def check_weights_given(args: Namespace) -> None:
    """Fail at once, naming the file to get, when the config trains from ImageNet weights."""
    from net.backbones import weights_hint

    if args.imagenet_required and no_weights(args.backbone_weights) and no_weights(args.weights):
        raise UserError(f"backbone {args.backbone} trains from ImageNet weights: pass "
                        f"--backbone_weights PATH to a local copy of {weights_hint(args.backbone)}"
                        " (or --imagenet_required False to train from scratch)")


def build_network(args: Namespace,
                  backbone_weights: str | os.PathLike | None = None) -> CAMNet:
    """The CAM network the config describes (backbone, strides, width, BN mode, its
    ``num_classes`` outputs: 21 VOC, 81 COCO), on the CPU.

    ``backbone_weights``: a local ImageNet file for the backbone, loaded at construction as
    CAMNet does (METHOD.md 2.1); None = random initialisation. ``args.backbone_weights`` and
    ``args.weights`` are not read: the caller says which weights the network starts from.
    """
    kw = {"trainable_bn": args.trainable_bn}
    if args.backbone_strides:
        kw["strides"] = tuple(args.backbone_strides)
    if args.backbone_width != 1.0:
        kw["width"] = args.backbone_width
    return CAMNet(args.backbone, num_classes=args.num_classes,
                  backbone_weights=backbone_weights, **kw)


def count_parameters(args: Namespace) -> int:
    """The parameter count of the config's network, built on the meta device: no weight is
    allocated, initialised or read (the preflight's checkpoint size, METHOD.md 12.7)."""
    quiet = logging.root.manager.disable
    logging.disable(logging.INFO)  # its "randomly initialised" line would mislead here
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_network(args).parameters())
    finally:
        logging.disable(quiet)


def on_device(model: CAMNet, args: Namespace, device: torch.device | str) -> CAMNet:
    """``model`` on ``device`` with the autocast dtype of ``--amp`` for that device."""
    model.amp_dtype = amp_dtype(args.amp, args.amp_dtype, torch.device(device))
    return model.to(device)


def build_model(args: Namespace, device: torch.device | str) -> CAMNet:
    """The network training starts from: ImageNet weights ``args.backbone_weights`` in the
    backbone, then CAM-net weights ``args.weights`` over the whole network when given."""
    model = build_network(args, backbone_weights=args.backbone_weights)
    if not no_weights(args.weights):
        load_checkpoint_weights(model, args.weights, read_checkpoint(args.weights))
    return on_device(model, args, device)


def class_count_problem(checkpoint: object, path: str | os.PathLike,
                        num_classes: int) -> str | None:
    """One line when the CAM checkpoint ``checkpoint`` (read from ``path``) is of another data
    set than this run's ``num_classes`` (a VOC checkpoint in a COCO run or back), told by the
    rows of its ``fc.weight``; None when they match, or when they are no data set's class
    count (another network: ``load_cam_weights`` then reports the mismatched keys)."""
    fc = state_dict_of(checkpoint, path).get("fc.weight")
    have = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else None
    if have == num_classes or have not in DESCRIPTIONS:
        return None
    want = describe(num_classes)
    return (f"{path} holds a CAM network of {have} classes ({DESCRIPTIONS[have].title}), "
            f"this config's num_classes is {num_classes} ({want.title}): use a checkpoint "
            f"trained on {want.title} or set num_classes {have}")


def load_checkpoint_weights(model: CAMNet, path: str | os.PathLike, checkpoint: object) -> None:
    """Load the weights of the CAM checkpoint ``checkpoint`` (the content of ``path``) into
    ``model``; a checkpoint of another class count fails first, in one line naming both
    (:func:`class_count_problem`), every other mismatch as ``load_cam_weights`` reports it."""
    problem = class_count_problem(checkpoint, path, model.fc.out_features)
    if problem is not None:
        raise UserError(problem)
    load_cam_weights(model, path, checkpoint=checkpoint)


def load_trained(args: Namespace, path: str | os.PathLike,
                 device: torch.device | str = "cpu") -> tuple[CAMNet, float | None]:
    """The network of the config with the trained weights of the checkpoint ``path`` (ours,
    released, MuSCLe or a plain state dict; METHOD.md 6 step 1), read once; no ImageNet file
    is read, the checkpoint holds every weight. Returns it with the checkpoint's ``camT``
    (None when the file records none, e.g. a plain state dict)."""
    ckpt = read_checkpoint(path)
    model = build_network(args)
    load_checkpoint_weights(model, path, ckpt)
    camT = ckpt.get("camT") if isinstance(ckpt, dict) else None
    return on_device(model, args, device), None if camT is None else float(camT)


def ddp_model(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun (itself otherwise); with ``sync_bn``
    its trainable BN layers first become SyncBatchNorm (``--sync_bn``, NCCL/CUDA only)."""
    if sync_bn and is_distributed():
        if device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (SyncBatchNorm runs on NCCL only); "
                            "drop the flag for Gloo/CPU runs")
        module = sync_batchnorm(module)
    return wrap_ddp(module)


def build_loaders(args: Namespace) -> tuple[TrainDataset, MultiScaleDataset]:
    """The training set and this rank's share of the validation set, with labels of the
    config's ``num_classes - 1`` foreground classes."""
    cls_labels = load_cls_labels(args.cls_labels)
    num_fg = describe(args.num_classes).num_fg
    train_ds = TrainDataset(
        load_img_name_list(args.train_list), args.voc12_root, cls_labels,
        crop_size=args.crop_size, view_size=args.view_size,
        resize_long=tuple(args.resize_long), view_min_side=args.view_min_side,
        seed=args.seed, jitter=tuple(args.jitter),
        with_views=args.pixpro_start < args.max_epoches, num_fg=num_fg)
    # each rank validates its share of the list; the confusion counts are summed afterwards
    val_ds = MultiScaleDataset(shard(load_img_name_list(args.val_list)), args.voc12_root,
                               cls_labels, scales=args.val_scales, num_fg=num_fg)
    return train_ds, val_ds


def epoch_loader(ds: TrainDataset, args: Namespace, epoch: int) -> DataLoader:
    """The engine's loader of one epoch with this stage's batch size, seed and collation."""
    return engine.epoch_loader(ds, epoch, args.batch_size, args.seed, args.num_workers,
                               collate_train)


def check_batch_size(args: Namespace, n_train: int) -> None:
    world = rank_world()[1]
    per_process = -(-n_train // world)  # DistributedSampler pads to equal shares
    if per_process < args.batch_size:
        where = f" per process ({world} processes)" if world > 1 else ""
        raise UserError(f"--batch_size {args.batch_size} exceeds the {per_process} images"
                        f"{where} of {args.train_list}")
