"""Stage-3 segmentation losses (METHOD.md 14.4 and 14.7.2): cross-entropy on the pseudo label,
MuSCLe's BEACON boundary-affinity loss, and the DeepLabV3 comparator's CE + auxiliary CE.

Shapes: N = batch, C = num_classes channels (21 on VOC, 81 on COCO; index 0 = background),
H x W = the crop; every function reads C from its tensors (``png_to_soft`` takes it).
``label_bg`` is the (N, C) image-level label with the always-present background first
(1 = present). Functions are pure and create their tensors on the device of their inputs; the
only randomness is BEACON's subsampling, drawn from an explicit ``random.Random`` (METHOD.md
14.0 G6).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from data.voc import IGNORE_INDEX, NUM_CLASSES

# BEACON constants (METHOD.md 14.4.2); k, step and beta are arguments of beacon_loss.
BEACON_EDGE_RATIO = 0.8  # edge set: magnitude >= 0.8 * the per-(sample, class) peak
BEACON_MIN_PEAK = 1.0  # a peak at or below this means "no boundary of that class"
BEACON_MIN_EDGES = 10  # fewer edge pixels over the whole batch: no BEACON term at all
BEACON_MAG_EPS = 1e-8  # inside the square root of the magnitude
BEACON_DELTA = 3.1416 / 8  # angle quantum; the release's rounded pi (14.8 S11)
_KERNEL_EPS = 1e-6  # the release's kernels hold 1e-6 where a Sobel kernel holds 0 (14.8 S11)


# ----------------------------------------------------------------------------- cross-entropy
def soft_to_target(soft_mask: torch.Tensor) -> torch.Tensor:
    """CE target of a soft pseudo label (METHOD.md 14.3.2): argmax over the channels.

    (N, C, H, W) float -> (N, H, W) long. Ties go to the lowest index, so the all-zero vector of
    crop padding becomes 0 = background (14.8 S2).
    """
    # torch.argmax returns the first maximal index; stated here because S2 relies on it.
    return soft_mask.argmax(dim=1)


def seg_ce_loss(logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise cross-entropy (METHOD.md 14.4.1), mean over the non-ignored pixels.

    logits (N, C, H, W), target (N, H, W) long -> scalar. Soft-derived targets never hold 255,
    so for them this is MuSCLe's plain mean over every pixel. PyTorch semantics throughout: a
    batch whose pixels are all ignored gives NaN.
    """
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def deeplab_loss(out: torch.Tensor, aux: torch.Tensor | None, target: torch.Tensor,
                 aux_weight: float = 0.5, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The DeepLabV3 comparator's loss (METHOD.md 14.7.2): CE(out) + aux_weight * CE(aux).

    out, aux (N, C, H, W) logits at the label's resolution (aux may be None: CE(out) alone);
    target (N, H, W) long with ``ignore_index`` pixels left out of both means.
    """
    loss = seg_ce_loss(out, target, ignore_index)
    if aux is not None:
        loss = loss + aux_weight * seg_ce_loss(aux, target, ignore_index)
    return loss


def png_to_soft(target: torch.Tensor, num_classes: int = NUM_CLASSES,
                ignore_index: int = IGNORE_INDEX, pad_mask: torch.Tensor | None = None,
                ) -> torch.Tensor:
    """BEACON's mask for hard (PNG) labels (METHOD.md 14.4.2.8): one-hot of the target.

    target (N, H, W) long -> (N, num_classes, H, W) float32. Pixels equal to ``ignore_index``
    (or outside 0..num_classes-1) get the all-zero vector, which the softmax of 14.4.2.2 turns
    into the uniform 1/num_classes. With the default padding fill 0 the padding cannot be told
    from background in the target; ``pad_mask`` (N, H, W) bool, True at padding, zeroes it too.
    """
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    if pad_mask is not None:
        valid = valid & ~pad_mask
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes) * valid[..., None]
    return onehot.permute(0, 3, 1, 2).float()


# ----------------------------------------------------------------------------- BEACON
def _float_at_least32(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32; float32/float64 kept (tests compare in float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _sobel_kernels(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The two 5x5 kernels of METHOD.md 14.4.2.1 as a (2, 1, 5, 5) conv2d weight [Gx, Gy].

    Cross-correlation (as nn.Conv2d): Gx > 0 where the map is higher on the left, Gy > 0 where
    it is higher on top. Gy is Gx transposed except at the centre (1e-6 in Gy, 0 in Gx), so
    both are written out.
    """
    e = _KERNEL_EPS
    gx = [[2, 1, e, -1, -2],
          [3, 2, e, -2, -3],
          [4, 3, 0, -3, -4],
          [3, 2, e, -2, -3],
          [2, 1, e, -1, -2]]
    gy = [[2, 3, 4, 3, 2],
          [1, 2, 3, 2, 1],
          [e, e, e, e, e],
          [-1, -2, -3, -2, -1],
          [-2, -3, -4, -3, -2]]
    return torch.tensor([[gx], [gy]], dtype=dtype, device=device)


def _angle_bins(theta: torch.Tensor, delta: float = BEACON_DELTA) -> torch.Tensor:
    """Quantise atan2 angles into the 8 bins of METHOD.md 14.4.2.1 step 5 (long, 0..7).

    Half-open [lower, upper) ranges in units of delta: bin 0 = [1, 3), 1 = [3, 5), 2 = [5, 7),
    4 = [-7, -5), 5 = [-5, -3), 6 = [-3, -1), 7 = [-1, 1), and bin 3 takes the rest, i.e.
    [7, 8) and [-8, -7), which covers +-pi because 8 * delta > pi. Every mask is tested on the
    raw angle, so no assignment can cascade into the next.
    """
    ranges = {0: (1, 3), 1: (3, 5), 2: (5, 7), 4: (-7, -5), 5: (-5, -3), 6: (-3, -1),
              7: (-1, 1)}
    bins = torch.full_like(theta, 3, dtype=torch.long)
    for b, (lo, hi) in ranges.items():
        bins[(theta >= lo * delta) & (theta < hi * delta)] = b
    return bins


@torch.no_grad()
def beacon_edges(seg_logits: torch.Tensor, label_bg: torch.Tensor, beta: float = 100.0,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class boundaries of the prediction (METHOD.md 14.4.2.1), without gradient.

    Args:
        seg_logits: (N, C, H, W) logits Z; only softmax(beta * Z) of the foreground channels
            is used, a near-hard mask at beta = 100.
        label_bg: (N, C) image labels with background first; absent classes get zero gradients
            and therefore no edges.

    Returns:
        mag (N, C-1, H, W): sqrt(gx^2 + gy^2 + 1e-8) of the label-masked gradients (so 1e-4,
            not 0, for an absent class);
        bins (N, C-1, H, W) long in 0..7: the quantised atan2(gy, gx);
        pos (N, C-1, H, W) bool: the edge set, mag >= 0.8 * its per-(n, c) peak where that
            peak exceeds 1 and the class is present.
    """
    z = _float_at_least32(seg_logits.detach())
    n, c, h, w = z.shape
    fg = torch.softmax(beta * z, dim=1)[:, 1:]  # (N, C-1, H, W)
    # All classes in one conv: every channel becomes its own 1-channel image (zero padding 2,
    # so a region touching the crop border has an edge along the border, 14.8 S11).
    grad = F.conv2d(fg.reshape(n * (c - 1), 1, h, w), _sobel_kernels(z.dtype, z.device),
                    padding=2).reshape(n, c - 1, 2, h, w)
    present = label_bg[:, 1:].to(z.dtype)
    grad = grad * present[:, :, None, None, None]
    gx, gy = grad[:, :, 0], grad[:, :, 1]
    mag = torch.sqrt(gx * gx + gy * gy + BEACON_MAG_EPS)
    bins = _angle_bins(torch.atan2(gy, gx))
    peak = mag.flatten(2).amax(dim=2)  # (N, C-1)
    active = (peak > BEACON_MIN_PEAK) & (label_bg[:, 1:] > 0)
    pos = (mag >= BEACON_EDGE_RATIO * peak[:, :, None, None]) & active[:, :, None, None]
    return mag, bins, pos


def beacon_sample_indices(bins_nc: torch.Tensor, pos_nc: torch.Tensor, step: int = 7,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The "out" and "in" sample pixels of one (sample, class) (METHOD.md 14.4.2.3).

    Args:
        bins_nc: (H, W) long angle bins of ``beacon_edges``.
        pos_nc: (H, W) bool edge set.
        step: the row offset of the "out" sample at vertical boundaries.

    Returns:
        (out_idx, in_idx): 1-D long row-major flat indices (row * W + col), in the row-major
        order of their edge pixels, each list filtered on its own and therefore unpaired.

    With o = bin + 1: o in {4, 8} (a vertical boundary) gives out = i - step * W and
    in = i + W; o in {2, 6} (a horizontal boundary) gives i - 1 and i + 1; the diagonal bins
    give the edge pixel itself twice. Both samples thus lie along the boundary, not across it
    (14.8 S7, reproduced). The filter keeps j iff j mod (W - 1) is not 0 or 1 and
    0 < j < H * W - 1: the W - 1 modulus strikes anti-diagonal lines rather than the first and
    last columns, and the range test drops offsets that leave the image vertically.
    """
    h, w = pos_nc.shape
    idx = torch.nonzero(pos_nc.reshape(-1), as_tuple=False).reshape(-1)  # row-major
    if w < 2:  # the W - 1 modulus is undefined; a 1-pixel-wide crop has no usable samples
        empty = idx[:0]
        return empty, empty
    o = bins_nc.reshape(-1)[idx] + 1
    vertical = (o == 4) | (o == 8)
    horizontal = (o == 2) | (o == 6)
    out_idx = torch.where(vertical, idx - step * w, torch.where(horizontal, idx - 1, idx))
    in_idx = torch.where(vertical, idx + w, torch.where(horizontal, idx + 1, idx))

    def keep(j: torch.Tensor) -> torch.Tensor:
        r = torch.remainder(j, w - 1)
        return j[(r != 0) & (r != 1) & (j > 0) & (j < h * w - 1)]

    return keep(out_idx), keep(in_idx)


def beacon_group_loss(sim: torch.Tensor, sim_mask: torch.Tensor, dim: int) -> torch.Tensor:
    """One part of a BEACON class term (METHOD.md 14.4.2.5 steps 4-7).

    Args:
        sim: (k, k) feature affinities S = A^T B (rows = out samples, columns = in samples).
        sim_mask: (k, k) mask affinities S_bar, the same layout; only compared, never
            differentiated.
        dim: 1 = row part (u_i = mean_j S_ij, per out sample), 0 = column part (per in sample).

    Returns:
        scalar: -avg_FP u + avg_FN u + avg_TP u - avg_TN u, where m = [u_bar > mean(S_bar)]
        and d = [u > mean(S)], FP = m & ~d, FN = ~m & d, TP = ~m & ~d, TN = m & d. A group that
        is empty contributes nothing. Samples whose mask affinity is above average (m) have
        their feature affinity pushed up, the others down; each side's two groups are averaged
        separately, so a group's weight does not depend on its size.
    """
    u = sim.mean(dim=dim)
    m = sim_mask.mean(dim=dim) > sim_mask.mean()
    d = u > sim.mean()
    loss = sim.new_zeros(())
    for group, sign in ((m & ~d, -1.0), (~m & d, 1.0), (~m & ~d, 1.0), (m & d, -1.0)):
        if bool(group.any()):
            loss = loss + sign * u[group].mean()
    return loss


def beacon_loss(seg_logits: torch.Tensor, dense_ft: torch.Tensor, soft_mask: torch.Tensor,
                label_bg: torch.Tensor, step: int = 7, k: int = 128, beta: float = 100.0,
                rng: random.Random | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """MuSCLe's BEACON loss (METHOD.md 14.4.2).

    Args:
        seg_logits: (N, C, H, W) logits Z; edges only, no gradient reaches it.
        dense_ft: (N, D, H, W) features F (D = 256 for muscle_b7), with gradient.
        soft_mask: (N, C, H, W) float pseudo-label mask M as batched (``png_to_soft`` for PNG
            labels); softmaxed over its channels, never differentiated.
        label_bg: (N, C) image labels with background first.
        All three of seg_logits, soft_mask and label_bg must have the same C.
        step, k, beta: row offset of vertical "out" samples, samples per side, softmax
            sharpness of the edge detector.
        rng: the generator of the subsampling. None means a fresh ``random.Random(0)`` per call:
            deterministic, but then every call with the same edges draws the same samples, so
            a trainer passes its own seeded generator that lives across iterations.

    Returns:
        (loss, edge_mag): loss is a scalar, or None when the batch has fewer than 10 edge
        pixels or no (sample, class) was admitted; edge_mag (N, H, W) = sum over the
        foreground classes of the edge magnitude (a by-product for visualisation).

    Per sample n ascending, then per present class c ascending: the class enters only if both
    filtered lists hold more than k pixels (14.4.2.4, 14.8 S8); it then draws
    ``rng.sample(range(K_out), k)`` and then ``rng.sample(range(K_in), k)`` (the order fixes the
    stream, 14.4.2.5), builds S = A^T B from Phi = softmax of F over its channels (A at the out
    samples with gradient, B at the in samples detached) and S_bar likewise from
    Psi = softmax of M over its channels, and adds the row and column parts of
    ``beacon_group_loss``. The sum is divided by the batch size N, not by the number of
    contributing terms (14.8 S10).
    """
    hw = seg_logits.shape[-2:]
    if dense_ft.shape[-2:] != hw or soft_mask.shape[-2:] != hw:
        raise ValueError(
            f"beacon_loss: seg_logits {tuple(seg_logits.shape)}, dense_ft {tuple(dense_ft.shape)}"
            f" and soft_mask {tuple(soft_mask.shape)} must share H x W")
    n_classes = seg_logits.shape[1]
    if soft_mask.shape[1] != n_classes or label_bg.shape[-1] != n_classes:
        raise ValueError(
            f"beacon_loss: seg_logits {tuple(seg_logits.shape)}, soft_mask "
            f"{tuple(soft_mask.shape)} and label_bg {tuple(label_bg.shape)} must share C")
    if rng is None:
        rng = random.Random(0)
    mag, bins, pos = beacon_edges(seg_logits, label_bg, beta)
    edge_mag = mag.sum(dim=1)
    if int(pos.sum()) < BEACON_MIN_EDGES:
        return None, edge_mag

    n_batch = seg_logits.shape[0]
    feats = _float_at_least32(dense_ft).flatten(2)  # (N, D, H*W)
    masks = _float_at_least32(soft_mask).detach().flatten(2)  # (N, C, H*W)
    present = (label_bg[:, 1:] > 0).tolist()
    total: torch.Tensor | None = None
    for n in range(n_batch):
        for c in range(bins.shape[1]):
            if not present[n][c]:
                continue
            out_idx, in_idx = beacon_sample_indices(bins[n, c], pos[n, c], step)
            k_out, k_in = out_idx.numel(), in_idx.numel()
            if k_out <= k or k_in <= k:
                continue
            r_out = torch.tensor(rng.sample(range(k_out), k), device=out_idx.device)
            r_in = torch.tensor(rng.sample(range(k_in), k), device=in_idx.device)
            px_out = out_idx[r_out].to(feats.device)
            px_in = in_idx[r_in].to(feats.device)
            # The channel softmax is per pixel, so taking it after the gather gives the same
            # Phi and Psi at the sampled pixels without softmaxing the whole (D, H, W) map.
            a = torch.softmax(feats[n][:, px_out], dim=0)  # (D, k), with gradient
            b = torch.softmax(feats[n][:, px_in].detach(), dim=0)  # (D, k), a constant
            a_bar = torch.softmax(masks[n][:, px_out], dim=0)  # (C, k)
            b_bar = torch.softmax(masks[n][:, px_in], dim=0)
            sim = a.t() @ b  # (k, k): rows follow the out draw, columns the in draw
            sim_mask = a_bar.t() @ b_bar
            term = beacon_group_loss(sim, sim_mask, 1) + beacon_group_loss(sim, sim_mask, 0)
            total = term if total is None else total + term
    if total is None:
        return None, edge_mag
    return total / n_batch, edge_mag
