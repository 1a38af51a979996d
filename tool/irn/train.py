"""Stage 2 training (METHOD.md 13.5): IRN on the IR labels of our CAMs, on the engine
(``tool.common.engine``), then the mean-shift estimate (13.5.5).

- Data: ``IRNAffinityDataset`` over ``train_list`` (train_aug) and the IR labels in
  ``ir_label_out_dir``; :func:`run` makes the missing labels first (``make_ir_labels``),
  after the run folder is claimed, so that they are logged to ``train.log``; a single
  process only (under torchrun the preflight asks for ``make_ir_labels.py`` first).
- Optimiser: ``PolyOptimizer`` over the two parameter groups of ``IRNet.trainable_parameters``,
  the edge group at ``irn_learning_rate`` and the displacement group at ``irn_lr_mult_disp``
  times it (13.5.3, 13.5.6), momentum ``irn_momentum`` (1e-4: quirk Q1 reproduced).
  ``max_step`` = iterations per epoch x epochs, per process under torchrun (each process steps
  once per iteration). The optimiser schedules itself (its ``global_step`` is in its state dict),
  so the engine's scheduler is :class:`NoSchedule`, a stand-in with an empty state.
- No validation (13.5.4), so nothing selects a model: an epoch's score is its number, every
  epoch writes ``best.ckpt`` too, and it always equals ``last.ckpt`` (the end of the schedule,
  with the mean shift, is the model stage 2 infers with).
- After the last epoch, before its checkpoint: ``running_mean`` of the mean shift from
  ``irn_mean_shift_list`` (VOC train), top-left crop/pad, batch ``irn_batch_size``, drop_last
  (13.5.5, quirk Q21 reproduced). Under torchrun every process computes the same estimate (the
  weights are the same), rank 0 saves it.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from data.irn_affinity import IRNAffinityDataset, TopLeftCropImages, ir_label_path, label_grid_size
from data.preflight import DatasetCheck
from data.voc import load_img_name_list
from net.irn_net import IRNet
from net.weights import no_weights
from tool.common.checkpoint import init_from_stage1
from tool.common.dist import rank_world, wrap_ddp
from tool.common.engine import (
    EngineConfig,
    EpochResult,
    Stage,
    engine_config,
    iterations_per_epoch,
    run_stage,
)
from tool.common.errors import UserError
from tool.common.preflight import (
    PreflightError,
    Problems,
    check_input_files,
    check_output_folder,
)
from tool.common.runtime import seed_everything
from tool.irn.losses import irn_loss
from tool.irn.optim import PolyOptimizer
from tool.irn.path_index import PathIndex

log = logging.getLogger("plmix")

# Epoch means of the loss and its parts (METHOD.md 13.5.2): L, the background- and
# foreground-positive and negative affinity terms, the two displacement terms.
LOSS_COLUMNS = ("loss", "bg_pos", "fg_pos", "neg", "dp_fg", "dp_bg")
# lr: the edge group's rate at the epoch start (the displacement group's is x irn_lr_mult_disp)
COLUMNS = ("epoch", "lr", *LOSS_COLUMNS, "mean_shift_y", "mean_shift_x", "seconds")
RUN_MARKERS = ("last.ckpt", "metrics.csv")
RUN_OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.csv")


class NoSchedule:
    """The engine's scheduler slot: ``PolyOptimizer`` sets its own rates at every step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_net(args: Namespace) -> IRNet:
    """IRNet from the config; ``irn_init_from_cam``: its trunk from a stage-1 checkpoint."""
    net = IRNet(args.irn_backbone, args.irn_backbone_weights, crop_size=args.irn_crop_size,
                backbone_width=args.irn_backbone_width)
    if not no_weights(args.irn_init_from_cam):
        init_trunk_from_cam(net, args.irn_init_from_cam, args.allow_pickle)
    return net


def init_trunk_from_cam(net: IRNet, path: str, allow_pickle: bool = False) -> int:
    """``--irn_init_from_cam``: the IRN trunk from a stage-1 checkpoint's backbone."""
    return init_from_stage1(net.trunk, path, "--irn_init_from_cam",
                            f"the IRN trunk ({net.trunk_name})", allow_pickle)


class IRNStage(Stage):
    """IRN's edge and displacement heads on a frozen trunk (METHOD.md 13.5)."""

    columns, loss_columns = COLUMNS, LOSS_COLUMNS

    def __init__(self, args: Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        grid = label_grid_size(args.irn_crop_size)
        self.path_index = PathIndex(args.irn_train_radius, (grid, grid))
        self.train_set = IRNAffinityDataset(
            args.train_list, args.voc12_root, args.ir_label_out_dir, self.path_index,
            crop_size=args.irn_crop_size, rescale=args.irn_rescale, hflip=args.irn_hflip,
            seed=args.seed, num_classes=args.num_classes)
        per_epoch = iterations_per_epoch(len(self.train_set), args.irn_batch_size,
                                         "--irn_batch_size", args.train_list)
        seed_everything(args.seed)  # the same initial heads for a fresh run and a resumed one
        self.net = build_net(args).to(device)
        edge, disp = self.net.trainable_parameters()
        lr = args.irn_learning_rate
        self.optimizer = PolyOptimizer(
            [{"params": edge, "lr": lr}, {"params": disp, "lr": lr * args.irn_lr_mult_disp}],
            lr=lr, weight_decay=args.irn_weight_decay,
            max_step=per_epoch * args.irn_num_epoches, power=args.irn_poly_power,
            momentum=args.irn_momentum)
        self.scheduler = NoSchedule()
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.module = wrap_ddp(self.net)
        self.path_indices = [torch.from_numpy(p).to(device) for p in self.path_index.path_indices]
        self.search_dst = torch.from_numpy(self.path_index.search_dst).to(device)

    def begin_epoch(self, epoch: int) -> None:
        return None  # the dataset draws its augmentation from (seed, epoch, index)

    def step(self, model: torch.nn.Module, batch: dict, epoch_state: None) -> dict[str, float]:
        dev = self.device
        model.train()
        edge, disp = model(batch["img"].to(dev, non_blocking=True))
        out = irn_loss(edge, disp, self.path_indices, self.search_dst,
                       self.path_index.radius_floor,
                       batch["aff_bg_pos_label"].to(dev, non_blocking=True),
                       batch["aff_fg_pos_label"].to(dev, non_blocking=True),
                       batch["aff_neg_label"].to(dev, non_blocking=True),
                       with_displacement=self.args.irn_train_displacement)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        return {k: float(out[k].detach()) for k in LOSS_COLUMNS}

    def end_epoch(self, epoch: int) -> EpochResult:
        """No validation (13.5.4); after the last epoch the mean shift (13.5.5)."""
        row: dict[str, Any] = {"mean_shift_y": "", "mean_shift_x": ""}
        summary = "trained (IRN has no validation)"
        if epoch == self.args.irn_num_epoches - 1:
            shift = self.estimate_mean_shift()
            row = {"mean_shift_y": float(shift[0]), "mean_shift_x": float(shift[1])}
            summary = f"mean shift ({shift[0]:.4f}, {shift[1]:.4f}) estimated"
        # nothing to select with: the score is the epoch number, so every epoch is a new
        # "best" and best.ckpt is always last.ckpt (the engine's files stay as for stage 1)
        return EpochResult(float(epoch), row, summary)

    @torch.no_grad()
    def estimate_mean_shift(self) -> torch.Tensor:
        a = self.args
        images = TopLeftCropImages(a.irn_mean_shift_list, a.voc12_root, a.irn_crop_size)
        loader = DataLoader(images, batch_size=a.irn_batch_size, shuffle=False, drop_last=True,
                            num_workers=a.num_workers)
        if len(loader) == 0:
            raise UserError(f"--irn_mean_shift_list {a.irn_mean_shift_list} has "
                            f"{len(images)} images, fewer than one batch of "
                            f"{a.irn_batch_size} (the mean shift drops the last partial batch)")
        shift = self.net.estimate_mean_shift(loader).cpu()
        log.info("mean shift estimated on %d images of %s: (%.4f, %.4f)",
                 len(loader) * a.irn_batch_size, a.irn_mean_shift_list, shift[0], shift[1])
        return shift


def incomplete_labels(args: Namespace) -> int:
    """How many images of ``train_list`` have no IR label yet."""
    return sum(not ir_label_path(args.ir_label_out_dir, n).is_file()
               for n in load_img_name_list(args.train_list))


def preflight(args: Namespace) -> str:
    """Every check of stage 2's training inputs (METHOD.md 12.7) in one PreflightError,
    those of the missing IR labels' inputs included (``make_ir_labels``' own checks: CAM
    files, images, the label folder); returns a summary for the log. The image-level labels
    are not read: IRN learns from the IR labels only."""
    from tool.irn import make_labels

    problems = Problems()
    check_input_files(problems, args, ("irn_backbone_weights", "irn_init_from_cam"))
    if no_weights(args.irn_backbone_weights) and no_weights(args.irn_init_from_cam) \
            and args.irn_backbone == "resnet50":
        log.warning("no --irn_backbone_weights: the frozen IRN trunk stays randomly initialised")
    data = DatasetCheck(problems, args.voc12_root, None)
    data.split(args.train_list)
    data.split(args.irn_mean_shift_list)
    data.finish()
    check_output_folder(problems, args.irn_session, "--irn_session",
                        files=(*RUN_OUTPUTS, "train.log"))
    todo = incomplete_labels(args) if Path(args.train_list).is_file() else 0
    if todo and rank_world()[1] > 1:
        # the other processes would wait for rank 0 at their first collective, which times
        # out (NCCL: 10 minutes) long before a VOC-sized list is labelled
        problems.add(f"{todo} image(s) of {args.train_list} have no IR label in "
                     f"{args.ir_label_out_dir}: under torchrun, make them first "
                     "(python make_ir_labels.py with the same config and flags)")
    elif todo:
        try:
            make_labels.check_inputs(args)
        except PreflightError as e:
            problems.lines.extend(e.problems)
    problems.raise_if_any()
    made = f", {todo} IR label(s) to make first" if todo else ""
    return (f"preflight: {len(data.sizes)} images, IR labels in {args.ir_label_out_dir} and "
            f"{args.irn_session} checked{made}")


def build_stage(args: Namespace, device: torch.device) -> IRNStage:
    """The missing IR labels (single process only, the preflight saw to it; logged to
    ``train.log``), then the stage."""
    todo = incomplete_labels(args)
    if todo:
        from tool.irn.make_labels import make_from_args

        log.info("IR labels: %d image(s) of %s lack one in %s: making them first", todo,
                 args.train_list, args.ir_label_out_dir)
        make_from_args(args)
    return IRNStage(args, device)


def irn_engine_config(args: Namespace, device: torch.device, out: Path) -> EngineConfig:
    cfg = engine_config(args, device, out, max_epochs=args.irn_num_epoches,
                        batch_size=args.irn_batch_size, log_every=args.irn_log_every,
                        checkpoint_every=args.irn_checkpoint_every)
    # its own TensorBoard run: stage 1's events in the same folder stay
    return replace(cfg, tblog_dir=str(Path(args.tblog_dir) / "irn") if args.tblog_dir else None,
                   allow_pickle=bool(args.allow_pickle))


def run(args: Namespace) -> dict:
    """``train_irn.py``: the IR labels if missing, then IRN training in ``irn_session``
    (every process of a torchrun launch). Returns the final state summary."""
    from tool.irn.presets import apply_preset

    apply_preset(args, getattr(args, "irn_preset", None))
    out = Path(args.irn_session)
    stage, state = run_stage(
        args, out, lambda: preflight(args), lambda device, stack: build_stage(args, device),
        lambda device: irn_engine_config(args, device, out), markers=RUN_MARKERS,
        outputs=RUN_OUTPUTS)
    last = state.history[-1] if state.history else {}
    return {"session": str(out), "epochs": state.epoch + 1, "loss": last.get("loss"),
            "mean_shift": stage.net.mean_shift.running_mean.cpu().numpy().tolist()}

