"""CAM normalisations of METHOD.md section 3 (training: torch; validation/inference: numpy)."""
from __future__ import annotations

import numpy as np
import torch

from data.voc import IMAGENET_MEAN, IMAGENET_STD


def cam_maxnorm(cams: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-(n, c) min-max of ReLU(cams): (N, C, H, W) -> (N, C, H, W) in [0, 1).

    A constant channel becomes 0.
    """
    a = cams.clamp(min=0)
    flat = a.flatten(2)
    mn = flat.min(dim=2).values[..., None, None]
    mx = flat.max(dim=2).values[..., None, None]
    return ((a - mn - eps) / (mx - mn + eps)).clamp(min=0)


def cam_softmaxnorm(cams: torch.Tensor) -> torch.Tensor:
    """Softmax over the C - 1 foreground channels, background = 1 - max: (N, C, H, W) -> same
    (C = num_classes: 21 VOC, 81 COCO).

    Input channel 0 is ignored; absent classes take part in the softmax (METHOD.md 3).
    """
    fg = torch.softmax(cams[:, 1:], dim=1)
    bg = 1 - fg.max(dim=1, keepdim=True).values
    return torch.cat([bg, fg], dim=1)


def minmax_norm(maps: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The inference/validation min-max, per channel: np (C, H, W) -> np (C, H, W).

    Entries below min + eps are set to 0 before scaling and there is no final clamp, so the
    minimum lands slightly below 0, exactly as the released code does.
    """
    s = np.maximum(maps, 0)
    mn = s.min(axis=(1, 2), keepdims=True)
    mx = s.max(axis=(1, 2), keepdims=True)
    s = np.where(s < mn + eps, 0, s)
    return (s - mn - eps) / (mx - mn + eps)


def color_denorm(imgs: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: (N, 3, H, W) float -> np (N, 3, H, W) uint8.

    As released (quirk Q30): ``img * std + mean`` in float64, times 255, truncated (not
    clipped) on the cast; values outside [0, 255] wrap as numpy's float->uint8 cast does. In
    float32, 320 of the 768 (channel, value) pairs of a normalised uint8 image come out one off,
    which moves CRF pseudo-label pixels.
    """
    x = imgs.detach().cpu().numpy().astype(np.float64)
    mean = np.asarray(IMAGENET_MEAN, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float64).reshape(1, 3, 1, 1)
    return ((x * std + mean) * 255).astype(np.int64).astype(np.uint8)
