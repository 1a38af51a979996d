"""Stage 1 training (METHOD.md 5) on the engine (``tool.common.engine``): epochs of
``train_step``, per-epoch validation, the LR schedule on the selection score, ``camT`` following
the best threshold.

Under ``torchrun --nproc_per_node N`` the same loop runs in N processes: DDP averages the
gradients, a DistributedSampler splits each epoch, the ranks split the validation list and sum
their confusion counts, and rank 0 alone writes logs, metrics and checkpoints.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.datasets import collate_train
from data.description import describe
from data.preflight import DatasetCheck
from data.voc import image_path, load_image
from tool.cam.build import (
    build_loaders,
    build_model,
    check_batch_size,
    check_weights_given,
    count_parameters,
    ddp_model,
)
from tool.cam.infer import label_from_dict
from tool.cam.msf import msf_cams, present_dict
from tool.cam.step import StepContext, TrainLosses, crf_overlap_on, train_step
from tool.cam.validate import ValResult, validate
from tool.cam.vis import overlay_panel
from tool.common.dist import is_main, rank_world
from tool.common.engine import (  # noqa: F401 - resume_command: train_mcl.py's
    EngineConfig,
    EpochResult,
    Stage,
    resume_command,
    run_stage,
)
from tool.common.engine import engine_config as common_engine_config
from tool.common.errors import UserError
from tool.common.preflight import (
    Problems,
    check_input_files,
    check_output_folder,
    checkpoint_bytes,
)
from tool.common.runtime import epoch_generators, seed_everything
from tool.crf import CRFParams, CRFPool
from tool.eval.evaluation import parse_t_range

log = logging.getLogger("plmix")

# Epoch means of every loss term; 0 before the term's start epoch (METHOD.md 5.2).
LOSS_COLUMNS = ("loss_cls", "loss_er", "loss_imc", "loss_mixseg", "loss_dice", "loss_iou",
                "loss_sc", "loss_pixpro", "loss_emd")
# camT: the threshold the epoch trained with; best_t, miou: the validation sweep's best
# (empty under the GT-free protocol); val_map: image-level mAP on the validation list.
COLUMNS = ("epoch", "lr", *LOSS_COLUMNS, "camT", "best_t", "miou", "val_map", "seconds")

# what marks a run in the session folder, and what --overwrite removes (best.ckpt alone is no
# run: a run killed in its first epoch between writing it and last.ckpt cannot be resumed)
RUN_MARKERS = ("last.ckpt", "metrics.csv")
RUN_OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.csv")
N_OVERLAYS = 4  # validation images shown in TensorBoard each epoch


class EpochGenerators:
    """The step's own random draws of one epoch (D6), saved in mid-epoch checkpoints."""

    def __init__(self, seed: int, epoch: int, rank: int) -> None:
        self.rng, self.gen = epoch_generators(seed, epoch, rank)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])


class CAMStage(Stage):
    """The CAM network with the MCL losses and the PL-Mix branch (METHOD.md 5.4-5.6)."""

    columns, loss_columns = COLUMNS, LOSS_COLUMNS
    collate_fn = staticmethod(collate_train)

    def __init__(self, args: Namespace, device: torch.device, crf_pool: CRFPool) -> None:
        self.args, self.device, self.crf_pool = args, device, crf_pool
        self.crf = CRFParams.from_config(args) if args.crf else None  # built once per run
        self.train_set, self.val_set = build_loaders(args)
        check_batch_size(args, len(self.train_set))
        seed_everything(args.seed)  # the same initial weights for a fresh run and a resumed one
        self.net = build_model(args, device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr,
                                          weight_decay=args.wt_dec)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=args.lr_factor, patience=0, min_lr=args.min_lr)
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=self.net.amp_dtype == torch.float16)
        self.module = ddp_model(TrainLosses(self.net), device, args.sync_bn)
        if args.plmix and args.crf:
            on = crf_overlap_on(args.crf_overlap, device)
            log.info("PL-Mix: the CRF pseudo labels %s the main loss's backward "
                     "(crf_overlap: %s)", "overlap" if on else "precede", args.crf_overlap)
        # the released floor (MaxmIou) applies to the GT mIoU; the GT-free mAP starts from 0
        self.initial_best = args.MaxmIou if args.select_with_gt else 0.0
        self.camT = args.camT
        self.thresholds = parse_t_range(args.val_t_range)
        self.val_loader = DataLoader(self.val_set, batch_size=None,
                                     num_workers=args.num_workers)

    def begin_epoch(self, epoch: int) -> StepContext:
        gens = EpochGenerators(self.args.seed, epoch, rank_world()[0])
        ctx = StepContext(self.args, epoch, self.camT, gens.rng, gens.gen, self.crf_pool,
                          self.scaler, crf=self.crf)
        return _EpochState(ctx, gens)

    def step(self, model: torch.nn.Module, batch: dict, epoch_state: _EpochState
             ) -> dict[str, float]:
        return train_step(model, self.optimizer, batch, epoch_state.ctx, self.device)

    def end_epoch(self, epoch: int) -> EpochResult:
        a = self.args
        val = validate(self.net, self.val_loader, a.gt if a.select_with_gt else None,
                       self.thresholds, self.device, progress=is_main(),
                       num_classes=a.num_classes)
        score = selection_score(val, a.select_with_gt)
        self.scheduler.step(score)  # the same summed counts, so the same step on every rank
        row = {"camT": self.camT, "best_t": val.best_t, "miou": val.best_miou,
               "val_map": val.cls_map}
        # released protocol: the best validation threshold becomes the next epoch's camT
        if a.select_with_gt:
            self.camT = val.best_t
        summary = ("no GT read" if val.curve is None else
                   f"mIoU {val.best_miou:.2f}% at t={val.best_t:.2f}")
        curves = {} if val.curve is None else {
            "val/miou_by_threshold": dict(zip(val.curve.thresholds, val.curve.miou))}
        return EpochResult(score, row, f"{summary}, val mAP {val.cls_map:.2f}%", curves)

    def state_dict(self) -> dict[str, Any]:
        return {"camT": self.camT,
                "selection": "val_miou" if self.args.select_with_gt else "val_map"}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.camT = ckpt["camT"]

    @torch.no_grad()
    def log_images(self, writer: Any, epoch: int) -> None:
        """Image | CAM heat map | label at camT for the first validation images."""
        palette = describe(self.args.num_classes).palette()
        for i in range(min(N_OVERLAYS, len(self.val_set))):
            sample = self.val_set[i]
            _, sgc, _ = msf_cams(self.net, sample["img"], sample["size"], self.device)
            cams = present_dict(sgc, sample["label"])
            rgb = np.asarray(load_image(image_path(self.args.voc12_root, sample["name"])))
            label = label_from_dict(cams, self.camT, rgb.shape[:2],
                                    num_classes=self.args.num_classes)
            panel = overlay_panel(rgb, cams, label, palette)
            writer.add_image(f"cam/{sample['name']}", panel, epoch, dataformats="HWC")


class _EpochState:
    """The step context of an epoch and its generators (the part a checkpoint saves)."""

    def __init__(self, ctx: StepContext, gens: EpochGenerators) -> None:
        self.ctx, self.gens = ctx, gens

    def state_dict(self) -> dict[str, Any]:
        return self.gens.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gens.load_state_dict(state)


def selection_score(val: ValResult, with_gt: bool) -> float:
    """What steps the LR plateau and picks best.ckpt: the best-threshold mIoU on the GT masks
    (released protocol), or the image-level mAP, which needs image labels only (GT-free)."""
    return val.best_miou if with_gt else val.cls_map


def engine_config(args: Namespace, device: torch.device, out: Path) -> EngineConfig:
    return common_engine_config(args, device, out, max_epochs=args.max_epoches,
                                batch_size=args.batch_size, log_every=args.log_every,
                                checkpoint_every=args.checkpoint_every)


def preflight(args: Namespace, decode: bool = False) -> str:
    """Every check of stage 1's inputs and run folder (METHOD.md 12.7), all problems in one
    PreflightError; returns a summary for the log. ``decode``: decode every image and mask,
    not only their headers."""
    problems = Problems()
    try:
        check_weights_given(args)
    except UserError as e:
        problems.add(str(e))
    check_input_files(problems, args, ("weights", "backbone_weights"))
    data = DatasetCheck(problems, args.voc12_root, args.cls_labels, decode=decode,
                        num_fg=describe(args.num_classes).num_fg)
    data.split(args.train_list, require_foreground=True)
    # the released protocol reads the validation masks every epoch: check them now, not after
    # the first epoch has trained
    data.split(args.val_list, gt_dir=args.gt if args.select_with_gt else None)
    data.finish()
    try:
        need = 2 * checkpoint_bytes(count_parameters(args))  # best.ckpt and last.ckpt
    except UserError as e:
        problems.add(str(e))
        need = 0
    check_output_folder(problems, args.session_name, "--session_name",
                        files=(*RUN_OUTPUTS, "train.log"), need_bytes=need)
    if args.tblog_dir:
        check_output_folder(problems, args.tblog_dir, "--tblog_dir")
    problems.raise_if_any()
    return (f"preflight: {len(data.sizes)} images"
            f"{f', {data.n_masks} masks' if data.n_masks else ''} and {args.session_name} "
            "checked")


def run(args: Namespace) -> dict:
    """Train (in every process of a torchrun launch); returns the final state summary."""
    out = Path(args.session_name)

    def build(device: torch.device, stack: ExitStack) -> CAMStage:
        pool = stack.enter_context(CRFPool(args.crf_workers if args.crf and args.plmix else 0))
        return CAMStage(args, device, pool)

    stage, state = run_stage(
        args, out, lambda: preflight(args, decode=args.preflight_decode), build,
        lambda device: engine_config(args, device, out), markers=RUN_MARKERS,
        outputs=RUN_OUTPUTS)
    return {"best_score": state.best_score, "camT": stage.camT, "session": str(out)}
