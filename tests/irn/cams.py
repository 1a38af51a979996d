"""Synthetic stage-1 hand-off dicts for the stage-2 tests."""
from __future__ import annotations

import cv2
import numpy as np


def soft_cams(mask: np.ndarray) -> dict[int, np.ndarray]:
    """A hand-off dict from a VOC mask: each present class a blurred indicator, peak 0.9, so
    that the IR-label thresholds cut it at different places."""
    d = {}
    for c in np.unique(mask):
        if 1 <= c <= 20:
            obj = cv2.GaussianBlur((mask == c).astype(np.float32), (0, 0), 4.0)
            d[int(c) - 1] = (0.9 * obj / obj.max()).astype(np.float32)
    return d
