"""Pair labels of IRN training from an IR label on the stride-4 grid (METHOD.md 13.4.4).

The data pipeline makes them, and data/ may not import tool/irn, so they live here;
``tool.irn.path_index`` (their home in the module map) and ``data.irn_affinity`` re-export them.
Only numpy and torch: the path index can import this without the image stack.
"""
from __future__ import annotations

import numpy as np
import torch

from data.voc import NUM_CLASSES


def affinity_labels(label_map: np.ndarray | torch.Tensor, src_indices: np.ndarray | torch.Tensor,
                    dst_indices: np.ndarray | torch.Tensor, *, num_classes: int = NUM_CLASSES,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair labels from a reduced IR label map (METHOD.md 13.4.4).

    Args:
        label_map: (S_h, S_w) uint8 IR labels: 0 background, 1..num_classes - 1 classes, 255
            ignore (any value >= num_classes counts as ignore); numpy or a tensor on any device.
        src_indices: (n_src,) flat source indices; dst_indices: (n_dirs, n_src)
            (``PathIndex.src_indices``, ``PathIndex.dst_indices``).
        num_classes: classes with background (21 on VOC, 81 on COCO).

    Returns:
        (bg_pos, fg_pos, neg), each float32 (n_dirs, n_src) on ``label_map``'s device: both ends
        background; both ends the same class (even two instances of it); both ends valid but
        different (fg-bg or two classes). Pairs touching an ignored pixel are in none of them.
    """
    if not isinstance(label_map, torch.Tensor):
        label_map = torch.from_numpy(np.array(label_map))  # a copy: PIL arrays are read-only
    flat = label_map.reshape(-1).long()  # long: any integer dtype compares alike
    src = torch.as_tensor(src_indices, device=flat.device).reshape(1, -1)
    dst = torch.as_tensor(dst_indices, device=flat.device)
    f, t = flat[src], flat[dst]  # (1, n_src), (n_dirs, n_src)
    valid = (f < num_classes) & (t < num_classes)
    same = (f == t) & valid
    return (same & (f == 0)).float(), (same & (f > 0)).float(), (valid & ~same).float()
