"""CAM overlays for a quick look: image | CAM heat map | label at camT, in the palette of the
run's data set (``data.description``; COCO uses the VOC palette)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tool.common.fileio import atomic_save


def heatmap(rgb: np.ndarray, cam_dict: dict[int, np.ndarray]) -> np.ndarray:
    """Blend the per-pixel max over the present classes' maps (jet) onto the image."""
    h, w = rgb.shape[:2]
    m = np.max(np.stack(list(cam_dict.values())), 0) if cam_dict else np.zeros((h, w))
    jet = cv2.applyColorMap((np.clip(m, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (0.5 * rgb + 0.5 * jet[..., ::-1]).astype(np.uint8)


def label_overlay(rgb: np.ndarray, label: np.ndarray, palette: Sequence[int]) -> np.ndarray:
    """Blend the colours of ``label`` (H, W) uint8 onto the image at 50 % opacity; ``palette``:
    the flat 256 x [r, g, b] list of the data set (``DatasetDescription.palette()``)."""
    pal = np.array(palette, np.uint8).reshape(256, 3)
    return (0.5 * rgb + 0.5 * pal[label]).astype(np.uint8)


def overlay_panel(rgb: np.ndarray, cam_dict: dict[int, np.ndarray], label: np.ndarray,
                  palette: Sequence[int]) -> np.ndarray:
    """Image | heat map | label overlay side by side: (H, 3 W, 3) uint8."""
    return np.concatenate([rgb, heatmap(rgb, cam_dict), label_overlay(rgb, label, palette)],
                          axis=1)


def save_overlay(path: str | Path, rgb: np.ndarray, cam_dict: dict[int, np.ndarray],
                 label: np.ndarray, palette: Sequence[int]) -> None:
    """Write :func:`overlay_panel` as a PNG, atomically."""
    panel = overlay_panel(rgb, cam_dict, label, palette)
    atomic_save(path, lambda f: Image.fromarray(panel).save(f, format="PNG"))
