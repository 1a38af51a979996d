"""IRN training losses (METHOD.md 13.5.2): inter-pixel affinity from the class-boundary map, and
displacement between pixel pairs.

Shapes: N = batch, S_h x S_w = the stride-4 grid of the crop (128 x 128 at crop 512), n_dirs and
n_src = the directions and sources of the ``PathIndex`` built for that grid. The three pair masks
(bg_pos, fg_pos, neg) are the per-sample ``affinity_labels`` stacked to (N, n_dirs, n_src).
Every sum runs over the whole batch, all directions and all sources; each loss is a mean over
the pairs its mask selects. Functions are pure and work on the device of their inputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tool.irn.path_index import path_max

EPS = 1e-5  # inside the logs and in every denominator, as IRN


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, count_scale: float = 1.0
                 ) -> torch.Tensor:
    """sum(mask * values) / (count_scale * sum(mask) + EPS); mask broadcasts over values."""
    return (mask * values).sum() / (count_scale * mask.sum() + EPS)


def affinity_loss(edge_logits: torch.Tensor, path_indices: Sequence[np.ndarray | torch.Tensor],
                  bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  ) -> dict[str, torch.Tensor]:
    """Affinity losses of the boundary branch.

    Args:
        edge_logits: (N, 1, S_h, S_w) raw edge output; B = sigmoid(edge_logits).
        path_indices: the ``PathIndex.path_indices`` of an (S_h, S_w) grid (tensors already on
            the device avoid a copy per call).
        bg_pos, fg_pos, neg: (N, n_dirs, n_src) float masks.

    Returns:
        {bg_pos, fg_pos, pos, neg}: scalars. With the affinity a = 1 - max of B along the path,
        positives cost -ln(a + eps), negatives -ln(1 + eps - a); pos = (bg_pos + fg_pos) / 2,
        so background and foreground pairs weigh the same however many there are of each.
    """
    aff = 1.0 - path_max(torch.sigmoid(edge_logits), path_indices)
    pos_term = -torch.log(aff + EPS)
    neg_term = -torch.log(1.0 + EPS - aff)
    bg = _masked_mean(pos_term, bg_pos)
    fg = _masked_mean(pos_term, fg_pos)
    return {"bg_pos": bg, "fg_pos": fg, "pos": 0.5 * bg + 0.5 * fg,
            "neg": _masked_mean(neg_term, neg)}


def pair_displacement(disp: torch.Tensor, search_dst: np.ndarray | torch.Tensor,
                      radius_floor: int) -> torch.Tensor:
    """delta(s, d) = D(s) - D(s + o_d) for every source and direction.

    disp (N, 2, S_h, S_w) -> (N, 2, n_dirs, n_src); sources are the block rows [0, S_h - r_f),
    columns [r_f, S_w - r_f) row-major, as ``PathIndex.src_indices``.
    """
    r_f = int(radius_floor)
    c_h, c_w = disp.shape[2] - r_f, disp.shape[3] - 2 * r_f
    src = disp[:, :, :c_h, r_f:r_f + c_w].flatten(2)  # (N, 2, n_src)
    dst = torch.stack([disp[:, :, dy:dy + c_h, r_f + dx:r_f + dx + c_w].flatten(2)
                       for dy, dx in torch.as_tensor(search_dst).tolist()], dim=2)
    return src[:, :, None] - dst


def displacement_loss(disp: torch.Tensor, search_dst: np.ndarray | torch.Tensor,
                      radius_floor: int, fg_pos: torch.Tensor, bg_pos: torch.Tensor,
                      ) -> dict[str, torch.Tensor]:
    """Displacement losses of the instance branch.

    Args:
        disp: (N, 2, S_h, S_w) displacement field, channel 0 = dy, channel 1 = dx (grid cells).
        search_dst: (n_dirs, 2) direction offsets (dy, dx) in search order.
        radius_floor: r_f of the path index.
        fg_pos, bg_pos: (N, n_dirs, n_src) float masks.

    Returns:
        {fg, bg}: scalars. A same-class foreground pair should have delta = o_d (both pixels
        point at one centroid); a background pair delta = 0. Each is an L1 mean over the masked
        pairs and the two coordinates (hence the 2 in the denominator).
    """
    delta = pair_displacement(disp, search_dst, radius_floor)
    offsets = torch.as_tensor(search_dst, dtype=disp.dtype, device=disp.device)
    target = offsets.t()[None, :, :, None]  # (1, 2, n_dirs, 1), the reference's disp_target
    fg = _masked_mean((delta - target).abs(), fg_pos[:, None], 2.0)
    bg = _masked_mean(delta.abs(), bg_pos[:, None], 2.0)
    return {"fg": fg, "bg": bg}


def irn_loss(edge_logits: torch.Tensor, disp: torch.Tensor,
             path_indices: Sequence[np.ndarray | torch.Tensor],
             search_dst: np.ndarray | torch.Tensor, radius_floor: int,
             bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
             with_displacement: bool = True) -> dict[str, torch.Tensor]:
    """The IRN training loss L = (pos + neg)/2 + (dp_fg + dp_bg)/2 and its parts.

    Shapes as ``affinity_loss`` and ``displacement_loss``. Returns a dict of scalars:
    ``loss`` (L), ``bg_pos``, ``fg_pos``, ``pos``, ``neg``, ``dp_fg``, ``dp_bg``.
    ``with_displacement=False`` (config ``irn.train_displacement``, METHOD.md 13.9 Q22) leaves
    the displacement terms out of L (reported as 0); the semantic labels do not depend on them.
    """
    parts = affinity_loss(edge_logits, path_indices, bg_pos, fg_pos, neg)
    if with_displacement:
        dp = displacement_loss(disp, search_dst, radius_floor, fg_pos, bg_pos)
        dp_fg, dp_bg = dp["fg"], dp["bg"]
    else:
        dp_fg = dp_bg = edge_logits.new_zeros(())
    loss = 0.5 * (parts["pos"] + parts["neg"]) + 0.5 * (dp_fg + dp_bg)
    return {"loss": loss, **parts, "dp_fg": dp_fg, "dp_bg": dp_bg}
