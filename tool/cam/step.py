"""One training iteration (METHOD.md 5.4): the MCL losses, the PL-Mix branch (5.5) and the second
optimizer step with the view losses. Which parts run is decided by the epoch and the config.

Each optimizer step is one forward of ``TrainLosses`` (which runs every network pass that step
needs) and one backward: the contract DistributedDataParallel needs. Under DDP the partner
permutation and the image-level contrast stay within each process's batch.
"""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tool.cam import losses as L
from tool.cam import plmix
from tool.cam.camutils import cam_maxnorm, cam_softmaxnorm, color_denorm
from tool.crf import CRFParams


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
    PL-Mix); ``forward("views", ...)`` the step-2 loss (the two view passes). Wrap this module,
    not the network, in DistributedDataParallel.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, step: str, batch: dict, ctx: StepContext,
                device: torch.device) -> torch.Tensor:
        label = batch["label"].to(device, non_blocking=True)
        if step == "main":
            img = batch["img"].to(device, non_blocking=True)
            return main_losses(self.net, img, label, ctx)
        if step == "views":
            return view_losses(self.net, batch, label, ctx, device)
        raise ValueError(f"unknown step {step!r}; expected 'main' or 'views'")


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
    _optimizer_step(opt, model("main", batch, ctx, device), ctx.scaler, to_none)
    if ctx.active("pixpro_start"):  # second Adam step on the same state (quirk Q13)
        _optimizer_step(opt, model("views", batch, ctx, device), ctx.scaler, to_none)
    return ctx.losses


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor,
                    scaler: torch.amp.GradScaler | None, set_to_none: bool) -> None:
    opt.zero_grad(set_to_none=set_to_none)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def main_losses(model, img: torch.Tensor, label: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Step-1 loss: classification + ER, IMC from its epoch, the PL-Mix branch from its epoch."""
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
    if a.plmix and ctx.active("mix_start"):
        loss = loss + plmix_losses(model, img, label, sgc_n.detach(), ctx)
    return loss


def plmix_losses(model, img: torch.Tensor, label: torch.Tensor, sam: torch.Tensor,
                 ctx: StepContext) -> torch.Tensor:
    """METHOD.md 5.5: partner, pseudo labels, augmentation, mix image/label, mix forward, losses.

    sam: (N, 21, H, W) softmax-normalised SGC of the main (train-mode) pass, detached.
    """
    a = ctx.args
    label_bg = L.with_background(label)
    perm = plmix.partner_index(img.shape[0], ctx.gen, random_order=a.Random_order).to(img.device)
    partner_img = img[perm]
    model.eval()  # quirk Q11: partner and mix passes run in eval mode
    with torch.no_grad():  # the partner and its flip in one eval-mode batch (same result)
        sgc_p, sgc_pf = model(torch.cat([partner_img, partner_img.flip(-1)]), "cam")[1].chunk(2)
        partner_map = (sgc_p + sgc_pf.flip(-1)) / 2
    own_lbl, partner_lbl = make_pseudo_labels(
        torch.cat([img, partner_img]), torch.cat([sam, partner_map]),
        torch.cat([label_bg, label_bg[perm]]), ctx).split(img.shape[0])
    own_img = img
    if ctx.active("aug_start"):
        angles = plmix.draw_angles(ctx.rng, img.shape[0])
        own_img, own_lbl = plmix.rotate_pair(own_img, own_lbl, angles,
                                             released_centre=a.rotate_released_centre)
        own_img, own_lbl = plmix.random_scale_place(
            own_img, own_lbl, ctx.rng,
            label_interp="bilinear" if a.label_bilinear else "nearest")
    mix_lbl = plmix.mix_labels(own_lbl, partner_lbl)
    mix_img = plmix.mix_images(own_img, partner_img, own_lbl)
    P = cam_softmaxnorm(model(mix_img, "cam")[0])  # raw CAM, with grad, still eval mode
    mixlabel = plmix.union_labels(label, perm)
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


def make_pseudo_labels(images: torch.Tensor, maps: torch.Tensor, label_bg: torch.Tensor,
                       ctx: StepContext) -> torch.Tensor:
    """Own and partner pseudo labels in one call, so the CRF pool sees the whole set at once."""
    if ctx.crf is None:
        return plmix.pseudo_labels(maps, label_bg, ctx.camT)
    return plmix.crf_pseudo_labels(color_denorm(images), maps, label_bg, ctx.camT,
                                   pool=ctx.crf_pool, params=ctx.crf)


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
