"""One training iteration (METHOD.md 5.4): the MCL losses, the PL-Mix branch (5.5) and the second
optimizer step with the view losses. Which parts run is decided by the epoch and the config.

Each optimizer step is one forward of ``TrainLosses`` (which runs every network pass that step
needs) and one backward: the contract DistributedDataParallel needs. The overlapped step
(``crf_overlap``, METHOD.md 5.4.1) splits step 1 into two forwards and two backwards, the first
under DDP's ``no_sync()``, so its gradients are still all-reduced once. Under DDP the partner
permutation and the image-level contrast stay within each process's batch.

Shapes: C = num_classes (21 VOC, 81 COCO) as the network outputs it, K = C - 1 foreground
classes; nothing here is told the count, every part reads it from its tensors.
"""
from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tool.cam import losses as L
from tool.cam import plmix
from tool.cam.camutils import cam_maxnorm, cam_softmaxnorm, color_denorm
from tool.common.config import AUTO_BOOL
from tool.crf import CRFParams

# crf_overlap (configs/base.yaml), an auto-or-boolean key: auto = on with CUDA, off on the CPU
# (METHOD.md 5.4.1)
OVERLAP_MODES = AUTO_BOOL


@dataclass
class StepContext:
    """What one iteration needs besides the batch: config, epoch state and generators.

    ``crf``: the CRF settings of the pseudo labels (METHOD.md 5.5 step 4), None for none; left
    None, it is built from ``args`` here when ``args.crf`` is on, once for this context, not
    per iteration.
    """
    args: Namespace
    epoch: int
    camT: float
    rng: np.random.Generator          # numpy draws: EMD crops, scale-and-place, angles
    gen: torch.Generator              # torch draws: partner permutation
    crf_pool: object | None = None    # tool.crf pool shared across iterations
    scaler: torch.amp.GradScaler | None = None  # float16 loss scaling (--amp with fp16)
    crf: CRFParams | None = None
    losses: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crf is None and self.args.crf:
            self.crf = CRFParams.from_config(self.args)

    def active(self, start_key: str) -> bool:
        return self.epoch >= getattr(self.args, start_key)

    def record(self, name: str, value: torch.Tensor) -> torch.Tensor:
        self.losses[name] = float(value.detach())
        return value


class TrainLosses(nn.Module):
    """The CAM network with the loss of each optimizer step as its forward.

    ``forward("main", ...)`` is the step-1 loss (main pass, and the partner and mix passes of
    PL-Mix); ``forward("views", ...)`` the step-2 loss (the two view passes). The overlapped
    step 1 (METHOD.md 5.4.1) runs it in two forwards: ``forward("first", ...)`` returns the
    main pass's losses and the started PL-Mix branch (``PendingMix``, its CRF in flight),
    ``forward("mix", ..., pending=...)`` the mix losses. Wrap this module, not the network, in
    DistributedDataParallel.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, step: str, batch: dict, ctx: StepContext, device: torch.device,
                pending: PendingMix | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, PendingMix | None]:
        label = batch["label"].to(device, non_blocking=True)
        if step in ("main", "first"):
            img = batch["img"].to(device, non_blocking=True)
            if step == "main":
                return main_losses(self.net, img, label, ctx)
            return first_losses(self.net, img, label, ctx)
        if step == "mix":
            if pending is None:
                raise ValueError("step 'mix' needs the PendingMix of step 'first'")
            return plmix_finish(self.net, pending, ctx)
        if step == "views":
            return view_losses(self.net, batch, label, ctx, device)
        raise ValueError(f"unknown step {step!r}; expected 'main', 'first', 'mix' or 'views'")


def crf_overlap_on(mode: str, device: torch.device | str) -> bool:
    """``crf_overlap`` resolved: ``auto`` is on with CUDA (the CRF on the CPU cores is then the
    step's bottleneck), off on the CPU (the backward and the CRF workers share the cores)."""
    if mode not in OVERLAP_MODES:
        raise ValueError(f"crf_overlap {mode!r}: expected one of {OVERLAP_MODES}")
    if mode == "auto":
        return torch.device(device).type == "cuda"
    return mode == "true"


def overlaps(ctx: StepContext, device: torch.device | str) -> bool:
    """Whether this iteration runs the overlapped step 1: ``crf_overlap`` on and a CRF to
    overlap (``plmix``, ``crf``, from ``mix_start``)."""
    a = ctx.args
    return (ctx.crf is not None and a.plmix and ctx.active("mix_start")
            and crf_overlap_on(a.crf_overlap, device))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict,
               ctx: StepContext, device: torch.device) -> dict[str, float]:
    """Run one iteration and return the loss values it computed (name -> float).

    model: a ``TrainLosses``, or one wrapped in DistributedDataParallel.
    """
    ctx.losses = {}
    model.train()
    # Q29: the release (PyTorch 1.9) zeroed gradients instead of dropping them, so Adam also
    # steps the parameters a loss does not reach (fc in the second step), on their momentum.
    to_none = not ctx.args.zero_grad_released
    if overlaps(ctx, device):
        _overlapped_step(model, opt, batch, ctx, device, to_none)
    else:
        _optimizer_step(opt, model("main", batch, ctx, device), ctx.scaler, to_none)
    if ctx.active("pixpro_start"):  # second Adam step on the same state (quirk Q13)
        _optimizer_step(opt, model("views", batch, ctx, device), ctx.scaler, to_none)
    return ctx.losses


def _overlapped_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict,
                     ctx: StepContext, device: torch.device, set_to_none: bool) -> None:
    """Optimizer step 1 with the CRF off the critical path (METHOD.md 5.4.1): the main loss's
    backward runs while the CRF workers compute the pseudo labels, then the mix pass and its
    backward; the gradients add up to those of the summed loss, and one optimizer step follows.

    Under DDP the first backward runs in ``no_sync()``: its gradients stay local and the mix
    backward all-reduces their sum, once per optimizer step as in the plain step.
    """
    opt.zero_grad(set_to_none=set_to_none)
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if no_sync is not None else nullcontext():
        loss, pending = model("first", batch, ctx, device)
        _backward(loss, ctx.scaler)
    _backward(model("mix", batch, ctx, device, pending=pending), ctx.scaler)
    _step(opt, ctx.scaler)


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor,
                    scaler: torch.amp.GradScaler | None, set_to_none: bool) -> None:
    opt.zero_grad(set_to_none=set_to_none)
    _backward(loss, scaler)
    _step(opt, scaler)


def _scaling(scaler: torch.amp.GradScaler | None) -> bool:
    return scaler is not None and scaler.is_enabled()


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Backpropagate ``loss``, scaled by the float16 loss scale when there is one."""
    (scaler.scale(loss) if _scaling(scaler) else loss).backward()


def _step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One optimizer step on the gradients accumulated so far (unscaled first, float16)."""
    if not _scaling(scaler):
        opt.step()
        return
    scaler.step(opt)
    scaler.update()


def main_losses(model, img: torch.Tensor, label: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Step-1 loss: classification + ER, IMC from its epoch, the PL-Mix branch from its epoch.

    img (N, 3, S, S) normalised, label (N, K) multi-hot -> scalar loss.
    """
    loss, pending = first_losses(model, img, label, ctx)
    if pending is not None:
        loss = loss + plmix_finish(model, pending, ctx)
    return loss


def first_losses(model, img: torch.Tensor, label: torch.Tensor, ctx: StepContext
                 ) -> tuple[torch.Tensor, PendingMix | None]:
    """The main pass's losses (classification + ER, IMC from its epoch) and, from
    ``mix_start``, the PL-Mix branch up to its pseudo labels (``plmix_start``; None before).

    img (N, 3, S, S) normalised, label (N, K) multi-hot -> (scalar loss, pending branch).
    """
    a = ctx.args
    cam, sgc, emb, logits = model(img, "cam")
    cam_n, sgc_n = cam_softmaxnorm(cam), cam_softmaxnorm(sgc)
    loss = ctx.record("loss_cls", L.classification_loss(
        logits, label, alpha=a.focal_alpha, gamma=a.focal_gamma))
    loss = loss + ctx.record("loss_er", L.er_loss(cam_n, sgc_n, label, topk_ratio=a.er_topk))
    if ctx.active("imc_start"):
        imc = L.image_level_contrast(emb, label, temperature=a.imc_temperature)
        if imc is not None:  # the release skips the loss when no anchor contributes
            loss = loss + ctx.record("loss_imc", imc)
    pending = None
    if a.plmix and ctx.active("mix_start"):
        pending = plmix_start(model, img, label, sgc_n.detach(), ctx)
    return loss, pending


@dataclass
class PendingMix:
    """The PL-Mix branch between its pseudo labels' start and the mix pass (METHOD.md 5.5).

    img, partner_img: (N, 3, S, S) normalised; label: (N, K); perm: (N,) partner indices;
    labels: waits for the own and partner pseudo labels, (2N, S, S) long (own first).
    """
    img: torch.Tensor
    label: torch.Tensor
    perm: torch.Tensor
    partner_img: torch.Tensor
    labels: Callable[[], torch.Tensor]


def plmix_losses(model, img: torch.Tensor, label: torch.Tensor, sam: torch.Tensor,
                 ctx: StepContext) -> torch.Tensor:
    """METHOD.md 5.5: partner, pseudo labels, augmentation, mix image/label, mix forward, losses.

    sam: (N, C, H, W) softmax-normalised SGC of the main (train-mode) pass, detached.
    """
    return plmix_finish(model, plmix_start(model, img, label, sam, ctx), ctx)


def plmix_start(model, img: torch.Tensor, label: torch.Tensor, sam: torch.Tensor,
                ctx: StepContext) -> PendingMix:
    """METHOD.md 5.5 steps 1-4: partner (from ``ctx.gen``), partner map (eval mode, no grad),
    and the pseudo labels started (with ``crf`` they may still be computing on return).

    img (N, 3, S, S), label (N, K), sam (N, C, S, S) as for ``plmix_losses``.
    """
    a = ctx.args
    label_bg = L.with_background(label)
    perm = plmix.partner_index(img.shape[0], ctx.gen, random_order=a.Random_order).to(img.device)
    partner_img = img[perm]
    model.eval()  # quirk Q11: partner and mix passes run in eval mode
    with torch.no_grad():  # the partner and its flip in one eval-mode batch (same result)
        sgc_p, sgc_pf = model(torch.cat([partner_img, partner_img.flip(-1)]), "cam")[1].chunk(2)
        partner_map = (sgc_p + sgc_pf.flip(-1)) / 2
    model.train()
    labels = start_pseudo_labels(torch.cat([img, partner_img]), torch.cat([sam, partner_map]),
                                 torch.cat([label_bg, label_bg[perm]]), ctx)
    return PendingMix(img, label, perm, partner_img, labels)


def plmix_finish(model, p: PendingMix, ctx: StepContext) -> torch.Tensor:
    """METHOD.md 5.5 steps 5-8: wait for the pseudo labels, augment the own pair (angles and
    scale-and-place from ``ctx.rng``), mix, the mix pass (eval mode, with grad) and its losses
    -> scalar loss."""
    a = ctx.args
    own_lbl, partner_lbl = p.labels().split(p.img.shape[0])
    own_img = p.img
    if ctx.active("aug_start"):
        angles = plmix.draw_angles(ctx.rng, own_img.shape[0])
        own_img, own_lbl = plmix.rotate_pair(own_img, own_lbl, angles,
                                             released_centre=a.rotate_released_centre)
        own_img, own_lbl = plmix.random_scale_place(
            own_img, own_lbl, ctx.rng,
            label_interp="bilinear" if a.label_bilinear else "nearest")
    mix_lbl = plmix.mix_labels(own_lbl, partner_lbl)
    mix_img = plmix.mix_images(own_img, p.partner_img, own_lbl)
    model.eval()  # quirk Q11
    P = cam_softmaxnorm(model(mix_img, "cam")[0])  # raw CAM, with grad, still eval mode
    mixlabel = plmix.union_labels(p.label, p.perm)
    logits_q3 = a.mix_probs_as_logits
    loss = ctx.record("loss_mixseg", L.mix_seg_loss(P, mix_lbl, a.mix_loss,
                                                    probs_as_logits=logits_q3))
    loss = loss + ctx.record("loss_dice", L.soft_dice_loss(P, mix_lbl,
                                                           probs_as_logits=logits_q3))
    loss = loss + ctx.record("loss_iou", L.soft_iou_loss(P, mix_lbl, probs_as_logits=logits_q3))
    loss = loss + ctx.record("loss_sc", L.spatial_continuity_loss(
        P, mixlabel, threshold=a.sc_threshold, released_mask=a.sc_released_mask))
    model.train()
    return loss


def start_pseudo_labels(images: torch.Tensor, maps: torch.Tensor, label_bg: torch.Tensor,
                        ctx: StepContext) -> Callable[[], torch.Tensor]:
    """Own and partner pseudo labels in one call, so the CRF pool sees the whole set at once:
    returns the call that waits for them. Without CRF they are computed here; with it the CRF
    runs in ``ctx.crf_pool`` meanwhile.

    images (M, 3, S, S) normalised, maps (M, C, S, S), label_bg (M, C); the call returns
    (M, S, S) long.
    """
    if ctx.crf is None:
        labels = plmix.pseudo_labels(maps, label_bg, ctx.camT)
        return lambda: labels
    return plmix.start_crf_pseudo_labels(color_denorm(images), maps, label_bg, ctx.camT,
                                         pool=ctx.crf_pool, params=ctx.crf).result


def view_losses(model, batch: dict, label: torch.Tensor, ctx: StepContext,
                device: torch.device) -> torch.Tensor:
    """Step-2 loss (METHOD.md 5.4 step 7): PixPro from its epoch, plus EMD from its epoch."""
    a = ctx.args
    model.eval()  # quirk Q11
    v1 = batch["view1"].to(device, non_blocking=True).float()
    v2 = batch["view2"].to(device, non_blocking=True).float()
    c1, c2 = batch["coord1"], batch["coord2"]
    sgc1 = model(v1, "pix")[1]
    with torch.no_grad():
        cam2 = model(v2, "pix")[0]
    mask = L.with_background(label)[:, :, None, None]
    loss = ctx.record("loss_pixpro", L.pixpro_loss(
        cam_maxnorm(sgc1) * mask, cam_maxnorm(cam2) * mask, c1, c2))
    if ctx.active("emd_start"):
        u1 = F.normalize(cam_softmaxnorm(sgc1), dim=1)
        u2 = F.normalize(cam_softmaxnorm(cam2), dim=1)
        loss = loss + ctx.record("loss_emd", L.emd_loss(
            u1, u2, c1, c2, ctx.rng, eps=a.emd_eps, iters=a.emd_iters,
            min_size=a.emd_min_size, max_aspect=a.emd_max_aspect, min_out=a.emd_min_out,
            pool_above=a.emd_pool_above, pool=a.emd_pool))
    model.train()
    return loss
