"""Multi-scale + flip CAM forward shared by per-epoch validation and inference (METHOD.md 1.6, 6).

Each scale's original and flipped pass run as one batch of two; the maps are stripped of
channel 0, resized to the original size with OpenCV's bilinear resize, un-flipped (after the
resize, as released) and summed. The class count is the network's: C = num_classes channels
(21 VOC, 81 COCO) in, K = C - 1 foreground maps and scores out.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from tool.cam.camutils import minmax_norm


def _to_original(maps: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) tensor -> np (C - 1, H, W) float32 at the original size, background dropped."""
    m = maps[1:].float().cpu().numpy().transpose(1, 2, 0)
    h, w = size_hw
    if m.shape[:2] != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    if m.ndim == 2:  # cv2 drops a singleton channel axis
        m = m[..., None]
    return np.ascontiguousarray(m.transpose(2, 0, 1))


def _fg_probs(logits: torch.Tensor) -> np.ndarray:
    """(P, C) logits of P passes -> np (C - 1,) mean foreground sigmoid score."""
    return torch.sigmoid(logits[:, 1:].float()).mean(0).cpu().numpy()


@torch.no_grad()
def msf_scores(model: torch.nn.Module, passes: list[torch.Tensor],
               device: torch.device) -> np.ndarray:
    """Image-level class scores: the mean sigmoid of the foreground logits over ``passes``
    (as for ``msf_cams``), from the classifier alone (no CAM). Returns np (C - 1,)."""
    logits = [model(torch.stack(passes[i:i + 2]).to(device, non_blocking=True), "logits")[1]
              for i in range(0, len(passes), 2)]
    return _fg_probs(torch.cat(logits))


@torch.no_grad()
def msf_cams(model: torch.nn.Module, passes: list[torch.Tensor], size_hw: tuple[int, int],
             device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the raw CAM and the SGC over ``passes`` = [s1, flip(s1), s2, flip(s2), ...].

    passes: (3, h_s, w_s) tensors. Returns (cam_sum, sgc_sum), np (C - 1, H, W) float32 each,
    and the image-level scores of ``msf_scores`` (C - 1,) from the same forwards.
    """
    cam_sum = sgc_sum = None  # (C - 1, H, W) once the first forward gives C
    logits = []
    for i in range(0, len(passes), 2):
        x = torch.stack(passes[i:i + 2]).to(device, non_blocking=True)
        cam, sgc, _, lg = model(x, "cam")
        logits.append(lg)
        for j in range(x.shape[0]):
            c, s = _to_original(cam[j], size_hw), _to_original(sgc[j], size_hw)
            if j == 1:  # odd passes are flipped inputs: resized first, then flipped back,
                c, s = c[..., ::-1], s[..., ::-1]  # in the release's order (float rounding)
            if cam_sum is None:
                cam_sum = np.zeros(c.shape, np.float32)
                sgc_sum = np.zeros(s.shape, np.float32)
            cam_sum += c
            sgc_sum += s
    return cam_sum, sgc_sum, _fg_probs(torch.cat(logits))


def present_dict(maps: np.ndarray, label: np.ndarray) -> dict[int, np.ndarray]:
    """Min-max normalise the summed maps and keep the present classes (the format of METHOD.md 6).

    maps: np (K, H, W) summed maps; label: (K,) multi-hot (K = num_classes - 1: 20 VOC, 80
    COCO). Returns {0-based class index 0..K-1: float32 (H, W)}.
    """
    label = np.asarray(label)
    if label.shape != maps.shape[:1]:
        raise ValueError(f"a label of shape {label.shape} for {maps.shape[0]} class maps: the "
                         "data set's class count differs from the network's")
    keys = np.nonzero(label > 0)[0]
    if len(keys) == 0:
        return {}
    norm = minmax_norm(maps[keys])
    return {int(k): norm[i].astype(np.float32) for i, k in enumerate(keys)}
