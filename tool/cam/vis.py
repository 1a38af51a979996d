"""CAM overlays for a quick look: image | CAM heat map | label at camT (VOC palette)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.voc import voc_palette
from tool.common.fileio import atomic_save


def heatmap(rgb: np.ndarray, cam_dict: dict[int, np.ndarray]) -> np.ndarray:
    """Blend the per-pixel max over the present classes' maps (jet) onto the image."""
    h, w = rgb.shape[:2]
    m = np.max(np.stack(list(cam_dict.values())), 0) if cam_dict else np.zeros((h, w))
    jet = cv2.applyColorMap((np.clip(m, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (0.5 * rgb + 0.5 * jet[..., ::-1]).astype(np.uint8)


def label_overlay(rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Blend the VOC-palette colours of ``label`` (H, W) onto the image at 50 % opacity."""
    pal = np.array(voc_palette(), np.uint8).reshape(256, 3)
    return (0.5 * rgb + 0.5 * pal[label]).astype(np.uint8)


def save_overlay(path: str | Path, rgb: np.ndarray, cam_dict: dict[int, np.ndarray],
                 label: np.ndarray) -> None:
    panel = np.concatenate([rgb, heatmap(rgb, cam_dict), label_overlay(rgb, label)], axis=1)
    atomic_save(path, lambda f: Image.fromarray(panel).save(f, format="PNG"))
