"""Training losses of METHOD.md section 4: classification, ER, IMC, PixPro, EMD and PL-Mix losses.

Shapes: N = batch, C = num_classes channels (index 0 = background; 21 VOC, 81 COCO), K = C - 1
foreground classes. ``labels`` is the (N, K) float multi-hot label and ``label_bg`` = [1, labels]
is (N, C). No function needs the class count: each reads it from its inputs' shapes. Every
function is pure and creates its tensors on the device of its inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from data.voc import IGNORE_INDEX
from tool.common.errors import UserError

MIX_SEG_KINDS = ("focal", "ce", "focal_ce")
FIX_LOG_EPS = 1e-6  # log(P + eps) of the Q3 fix; P is exactly 0 for every absent-class pixel
_MIN_WINDOW = 5  # get_dynamic_crops redraws window sizes below this (METHOD.md 4.7 step 3)


# ----------------------------------------------------------------------------- shared helpers
def with_background(labels: torch.Tensor) -> torch.Tensor:
    """Prepend the always-present background: (N, K) -> (N, K + 1), same dtype and device."""
    return torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1)


def _mask_maps(maps: torch.Tensor, label_bg: torch.Tensor) -> torch.Tensor:
    """Zero the channels of absent classes: (N, C, H, W) * (N, C) -> (N, C, H, W)."""
    return maps * label_bg.to(maps.dtype)[:, :, None, None]


def _zero_loss(ref: torch.Tensor) -> torch.Tensor:
    """A scalar 0 on ``ref``'s device that can be added to a loss and back-propagated."""
    return ref.new_zeros((), requires_grad=True)


def _crop(x: torch.Tensor, coord: list[int]) -> torch.Tensor:
    """Crop (C, H, W) to coord = (top, left, height, width) -> (C, height, width)."""
    t, l, h, w = coord
    return x[:, t:t + h, l:l + w]


def _one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) long -> (N, num_classes, H, W) float; ignored (255) pixels get all-zero rows."""
    valid = y < num_classes
    o = F.one_hot(torch.where(valid, y, 0), num_classes) * valid[..., None]
    return o.permute(0, 3, 1, 2).float()


def _log_probs(P: torch.Tensor, probs_as_logits: bool) -> torch.Tensor:
    """Per-pixel log-probabilities of (N, C, H, W) maps.

    Released (Q3): P, already in [0, 1], is softmaxed again as if it were logits.
    Fix: P is taken as the probabilities themselves, log(P + FIX_LOG_EPS).
    """
    return torch.log_softmax(P, dim=1) if probs_as_logits else torch.log(P + FIX_LOG_EPS)


# ----------------------------------------------------------------------------- classification
def focal_loss(probs: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
               gamma: float = 2.0, divide_by_alpha: bool = True) -> torch.Tensor:
    """Multi-label focal loss (METHOD.md 4.1): probs, labels (N, K) -> scalar.

    Summed over classes, mean over the batch. PL-Mix divides by sum(alpha) = alpha, so alpha
    cancels; ``divide_by_alpha=False`` gives MuSCLe's variant (alpha 0.5, no division).
    """
    pt = labels * probs + (1 - labels) * (1 - probs)
    loss = (-alpha * (1 - pt) ** gamma * torch.log(pt + 1e-9)).sum(dim=1).mean()
    return loss / alpha if divide_by_alpha else loss


def multilabel_soft_margin(logits_fg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MultiLabelSoftMarginLoss on raw foreground logits (METHOD.md 4.2): (N, K) x2 -> scalar."""
    return F.multilabel_soft_margin_loss(logits_fg, labels)


def lse_pairwise_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp pairwise ranking loss (METHOD.md 4.3): probs, labels (N, K) -> scalar.

    All K*K (positive i, negative j) pairs enter, including the zero-filled ones.
    """
    pos = probs * labels
    neg = probs * (1 - labels)
    pairs = torch.exp(neg[:, None, :] - pos[:, :, None])  # (N, i, j)
    return torch.log1p(pairs.mean(dim=(1, 2))).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
                        gamma: float = 2.0) -> torch.Tensor:
    """L_cls = focal + MLSM + pairwise on logits[:, 1:] (METHOD.md 5.4 step 3): (N, C), (N, K)."""
    fg = logits[:, 1:]
    probs = torch.sigmoid(fg)
    return (focal_loss(probs, labels, alpha, gamma) + multilabel_soft_margin(fg, labels)
            + lse_pairwise_loss(probs, labels))


# ----------------------------------------------------------------------------- ER and IMC
def er_loss(cam_norm: torch.Tensor, sgc_norm: torch.Tensor, labels: torch.Tensor,
            topk_ratio: float = 0.2) -> torch.Tensor:
    """Top-k equivariance loss (METHOD.md 4.4) between un-masked softmax-normalised maps.

    cam_norm, sgc_norm: (N, C, H, W); labels: (N, K). cam_norm is detached (the target).
    Returns the mean of the k largest |A - B| values of each sample, over N*k values. The
    batch has no positive label only outside VOC; k = 0 then returns 0 instead of NaN.
    """
    n, c, h, w = sgc_norm.shape
    label_bg = with_background(labels)
    diff = (_mask_maps(cam_norm.detach(), label_bg) - _mask_maps(sgc_norm, label_bg)).abs()
    # k counts the positives of the whole batch but is applied per sample; clamped (Q18)
    k = min(math.floor(topk_ratio * float(labels.sum()) * h * w), c * h * w)
    if k == 0:
        return _zero_loss(sgc_norm)
    return diff.flatten(1).topk(k, dim=1).values.mean()


def image_level_contrast(emb: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 0.1) -> torch.Tensor | None:
    """Image-level contrast (METHOD.md 4.5): emb (N, D), labels (N, K) -> scalar or None.

    For anchor i only j > i are looked at (Q19). Positives have identical labels, negatives
    share no class (a pair that is both, two empty labels, counts as both, as released). An anchor
    contributes only with >= 1 positive, >= 1 negative and #neg > #pos; the sum is divided by N.
    The released code returns the float 0.0 and skips adding the loss when no anchor
    contributes; None is our equivalent.
    """
    n = emb.shape[0]
    e = F.normalize(emb, dim=1, eps=1e-6)
    sim = torch.exp(e @ e.t() / temperature)
    lab = labels > 0.5
    later = torch.ones(n, n, dtype=torch.bool, device=emb.device).triu(1)
    same = (lab[:, None, :] == lab[None, :, :]).all(dim=2)
    disjoint = ~(lab[:, None, :] & lab[None, :, :]).any(dim=2)
    # two empty labels are both identical and disjoint: the release counts such a pair twice
    pos, neg = later & same, later & disjoint
    n_pos, n_neg = pos.sum(dim=1), neg.sum(dim=1)
    ok = (n_pos >= 1) & (n_neg >= 1) & (n_neg > n_pos)
    if not bool(ok.any()):
        return None
    p = 1e-6 + (sim * pos).sum(dim=1)
    q = 1e-6 + (sim * neg).sum(dim=1)
    return -torch.log(p / (p + q))[ok].sum() / n


# ----------------------------------------------------------------------------- PixPro
def _cosine_map(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine over dim 0 as torch 1.9's cosine_similarity: (C, h, w) x2 -> (h, w)."""
    norms = ((a * a).sum(dim=0) * (b * b).sum(dim=0)).clamp(min=eps * eps)
    return (a * b).sum(dim=0) / norms.sqrt()


def pixpro_loss(q: torch.Tensor, k: torch.Tensor, coord1: torch.Tensor,
                coord2: torch.Tensor) -> torch.Tensor:
    """Region consistency of the two views (METHOD.md 4.6) -> scalar.

    q: (N, C, h, w) normalised+masked view-1 maps (with grad); k: the same for view 2 (detached
    here). coord1/coord2: (N, 4) long (top, left, height, width) of the overlap in each view.
    Returns 1 - mean over samples of the mean per-pixel cosine over the overlap.
    """
    k = k.detach()
    cos = [_cosine_map(_crop(q[i], c1), _crop(k[i], c2)).mean()
           for i, (c1, c2) in enumerate(zip(coord1.tolist(), coord2.tolist()))]
    return 1 - torch.stack(cos).mean()


# ----------------------------------------------------------------------------- EMD
def _window_crops(x: torch.Tensor, rng: np.random.Generator, min_out: int, pool_above: int,
                  pool: int) -> torch.Tensor | None:
    """Random strided windows of one overlap map (METHOD.md 4.7 steps 3-7).

    x: (C, h, w) -> (A, C, m_h, m_w), windows in row-major order, or None when the resized
    size is below ``min_out``. Numpy's randint bounds are inclusive here, hence endpoint=True.
    """
    _, h, w = x.shape
    if h // 2 < _MIN_WINDOW or w // 2 < _MIN_WINDOW:  # the redraw loop below could never end
        return None
    lh = lw = 0
    while lh < _MIN_WINDOW or lw < _MIN_WINDOW:
        lh = int(rng.integers(h // 3, h // 2, endpoint=True))
        lw = int(rng.integers(w // 3, w // 2, endpoint=True))
    sh = int(rng.integers(lh // 2, lh, endpoint=True))
    sw = int(rng.integers(lw // 2, lw, endpoint=True))
    if sh < min_out or sw < min_out:
        return None
    wins = [x[:, a:a + lh, b:b + lw] for a in range(0, h, sh) for b in range(0, w, sw)
            if a + lh <= h and b + lw <= w]  # only windows that fit; (0, 0) always does
    crops = F.interpolate(torch.stack(wins), size=(sh, sw), mode="bilinear", align_corners=True)
    if sh > pool_above or sw > pool_above:
        crops = F.avg_pool2d(crops, pool, pool)
    return crops


def _quadrants(x: torch.Tensor, pool: int) -> torch.Tensor:
    """The four (h//2, w//2) quadrants of (C, h, w), row-major, pooled -> (4, C, q_h, q_w)."""
    _, h, w = x.shape
    qh, qw = h // 2, w // 2
    quads = [x[:, a:a + qh, b:b + qw] for a in (0, qh) for b in (0, qw)]
    return F.avg_pool2d(torch.stack(quads), pool, pool)


def dynamic_crops(x1: torch.Tensor, coord1: torch.Tensor, x2: torch.Tensor, coord2: torch.Tensor,
                  rng: np.random.Generator, *, min_size: int = 15, max_aspect: float = 5.0,
                  min_out: int = 7, pool_above: int = 28, pool: int = 4
                  ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """MuSCLe's get_dynamic_crops (METHOD.md 4.7 crops) on the overlaps of two views.

    x1, x2: (N, C, H, W); coord1, coord2: (N, 4) long (top, left, height, width); the overlap
    size is read from coord1. Returns one entry per sample: None when the sample is skipped
    (overlap < min_size or aspect > max_aspect) or has no view-1 crop, else
    (crops1 (A, C, m_h, m_w), crops2 (4, C, q_h, q_w)), crops stacked in row-major order.
    Skipped samples draw no random numbers.
    """
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for i, (c1, c2) in enumerate(zip(coord1.tolist(), coord2.tolist())):
        h, w = c1[2], c1[3]
        if h < min_size or w < min_size or h / w > max_aspect or w / h > max_aspect:
            out.append(None)
            continue
        crops1 = _window_crops(_crop(x1[i], c1), rng, min_out, pool_above, pool)
        out.append(None if crops1 is None else (crops1, _quadrants(_crop(x2[i], c2), pool)))
    return out


def sinkhorn_emd(cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, eps: float = 0.1,
                 iters: int = 10) -> torch.Tensor:
    """Log-domain Sinkhorn score (METHOD.md 4.7, Q17), batched over leading dims.

    cost: (..., M, Q); mu: (..., M); nu: (..., Q) (not normalised). Returns (...):
    sum(pi * cost.detach()) / (M * Q). u and v are updated simultaneously (Jacobi: v uses the
    G computed before u changed); gradient reaches ``cost`` only through pi.
    """
    m, q = cost.shape[-2:]
    log_mu, log_nu = torch.log(mu + 1e-6), torch.log(nu + 1e-6)
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)
    neg_c = cost / -eps  # hoisted out of the loop: G = (-C + u + v) / eps

    def g_of(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return neg_c + (u / eps)[..., :, None] + (v / eps)[..., None, :]

    for _ in range(iters):
        g = g_of(u, v)
        u, v = (u + eps * (log_mu - g.logsumexp(dim=-1)),
                v + eps * (log_nu - g.logsumexp(dim=-2)))
    pi = torch.exp(g_of(u, v))
    return (pi * cost.detach()).sum(dim=(-2, -1)) / (m * q)


def _pair_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cost 1 - x_a . y_b of every crop pair: (A, C, M), (B, C, Q) -> (A, B, M, Q)."""
    return 1 - torch.einsum("acm,bcq->abmq", x, y)


def emd_loss(u1: torch.Tensor, u2: torch.Tensor, coord1: torch.Tensor, coord2: torch.Tensor,
             rng: np.random.Generator, *, eps: float = 0.1, iters: int = 10,
             **crop_kw) -> torch.Tensor:
    """Dynamic-crop EMD loss (METHOD.md 4.7) -> scalar.

    u1: (N, C, H, W) channel-L2-normalised cam_softmaxnorm(SGC view 1), with grad;
    u2: the same for the raw CAM of view 2 (detached here); coords as in ``dynamic_crops``.
    Per valid sample, every (view-1 crop, view-2 quadrant) pair is scored at once under
    no_grad, the lowest score wins (first in row-major (crop, quadrant) order on ties), and
    that pair is re-scored with grad using the no-grad marginals. Mean over valid samples;
    a zero that supports backward() when no sample is valid. ``eps``/``iters``: Sinkhorn;
    ``crop_kw``: the crop constants of ``dynamic_crops`` (config keys ``emd_*``).
    """
    scores = []
    for crops in dynamic_crops(u1, coord1, u2.detach(), coord2, rng, **crop_kw):
        if crops is None:
            continue
        x, y = crops[0].flatten(2), crops[1].flatten(2)  # (A, C, M), (B, C, Q)
        with torch.no_grad():
            xd = x.detach()
            mu = torch.einsum("acm,bc->abm", xd, y.mean(dim=2))
            nu = torch.einsum("bcq,ac->abq", y, xd.mean(dim=2))
            best = int(sinkhorn_emd(_pair_cost(xd, y), mu, nu, eps, iters).argmin())
        a, b = divmod(best, y.shape[0])
        cost = _pair_cost(x[a:a + 1], y[b:b + 1])[0, 0]
        scores.append(sinkhorn_emd(cost, mu[a, b], nu[a, b], eps, iters))
    if not scores:
        return _zero_loss(u1)
    return torch.stack(scores).mean()


# ----------------------------------------------------------------------------- PL-Mix losses
def _deeplab_focal(logp: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """FocalLoss_DEEPLAB with alpha 1: mean over all N*H*W pixels, ignored pixels count 0."""
    nll = F.nll_loss(logp, y, ignore_index=IGNORE_INDEX, reduction="none")
    if gamma:
        nll = (1 - torch.exp(-nll)) ** gamma * nll
    return nll.mean()


def mix_seg_loss(P: torch.Tensor, Y: torch.Tensor, kind: str, *,
                 probs_as_logits: bool = True) -> torch.Tensor:
    """Mix-image segmentation loss (METHOD.md 4.8): P (N, C, H, W), Y (N, H, W) long -> scalar.

    kind: ``focal`` (released default; gamma 0, so plain CE averaged over all pixels, Q5),
    ``ce`` (mean over non-ignored pixels), ``focal_ce`` (2 * ce + focal with gamma 2).
    ``probs_as_logits`` selects the released Q3 behaviour or its fix (see ``_log_probs``).
    """
    logp = _log_probs(P, probs_as_logits)
    if kind == "focal":
        return _deeplab_focal(logp, Y, gamma=0.0)
    if kind == "ce":
        return F.nll_loss(logp, Y, ignore_index=IGNORE_INDEX)
    if kind == "focal_ce":
        return 2 * F.nll_loss(logp, Y, ignore_index=IGNORE_INDEX) + _deeplab_focal(logp, Y, 2.0)
    raise UserError(f"unknown mix loss {kind!r}; expected one of {', '.join(MIX_SEG_KINDS)}")


def _soft_sums(P: torch.Tensor, Y: torch.Tensor, num_classes: int | None,
               probs_as_logits: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole-batch sums (sum Q*O, sum Q, sum O) of SoftIoU/SoftDice (METHOD.md 4.9-4.10).

    Q = softmax(P) as released (Q3) or P itself (fix); O = one-hot(Y) over ``num_classes``
    (None: P's C channels), zero rows at 255.
    """
    q = torch.softmax(P, dim=1) if probs_as_logits else P
    o = _one_hot(Y, P.shape[1] if num_classes is None else num_classes).to(q.dtype)
    return (q * o).sum(), q.sum(), o.sum()


def soft_iou_loss(P: torch.Tensor, Y: torch.Tensor, num_classes: int | None = None, *,
                  probs_as_logits: bool = True, smooth: float = 1.0) -> torch.Tensor:
    """SoftIoU over the whole batch (METHOD.md 4.9): P (N, C, H, W), Y (N, H, W) long -> scalar.

    ``num_classes``: the one-hot width of Y; None (the stages' call) = C, P's channels."""
    inter, sq, so = _soft_sums(P, Y, num_classes, probs_as_logits)
    return 1 - (inter + smooth) / (sq + so - inter + smooth)


def soft_dice_loss(P: torch.Tensor, Y: torch.Tensor, num_classes: int | None = None, *,
                   probs_as_logits: bool = True, smooth: float = 1.0) -> torch.Tensor:
    """Whole-batch SoftDice (METHOD.md 4.10): P (N, C, H, W), Y (N, H, W) long -> scalar;
    ``num_classes`` as for :func:`soft_iou_loss`."""
    inter, sq, so = _soft_sums(P, Y, num_classes, probs_as_logits)
    return 1 - (2 * inter + smooth) / (sq + so + smooth)


def spatial_continuity_loss(P: torch.Tensor, mixlabel: torch.Tensor, threshold: float = 0.3,
                            released_mask: bool = True) -> torch.Tensor:
    """Thresholded total variation of P (METHOD.md 4.11): P (N, C, H, W), mixlabel (N, K) -> scalar.

    released_mask=True reproduces Q4: channels are indexed with the 0/1 label values
    themselves, so the mask is channels {0, 1} for every real label. False: {0} + present.
    """
    if released_mask:
        mask = P.new_zeros(P.shape[:2]).scatter_(1, mixlabel.long(), 1.0)
    else:
        mask = with_background(mixlabel).to(P.dtype)
    dx = (P[..., :, 1:] - P[..., :, :-1]).abs()
    dy = (P[..., 1:, :] - P[..., :-1, :]).abs()
    # the released zero padding back to H x W only shows in the N*C*H*W denominator
    total = sum((_mask_maps(torch.where(d > threshold, d, 0.0), mask)).sum() for d in (dx, dy))
    return total / P.numel()
