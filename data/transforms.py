"""Image operations of the training and inference pipelines (METHOD.md 1.3, 1.4, 1.6).

Every random op takes an explicit ``numpy.random.Generator`` (decision D6) and never touches the
global Python, numpy or torch RNGs. Images stay PIL RGB up to normalisation and are then
HWC float32 numpy arrays; conversion to torch lives in ``data.datasets``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

from data.voc import IMAGENET_MEAN, IMAGENET_STD
from tool.common.errors import UserError


@dataclass(frozen=True)
class Jitter:
    """Colour-jitter strengths, torchvision ``ColorJitter`` semantics.

    Brightness/contrast/saturation factors are drawn from U[max(0, 1 - s), 1 + s], the hue shift
    from U[-hue, hue]. A strength of 0 switches that op off.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0 or self.hue > 0.5:
            raise UserError(f"bad colour jitter {self}: strengths must be >= 0 and hue <= 0.5")

    @classmethod
    def of(cls, value: Jitter | Sequence[float]) -> Jitter:
        """Accept a ``Jitter`` or the config's ``[brightness, contrast, saturation, hue]``."""
        if isinstance(value, Jitter):
            return value
        if len(value) != 4:
            raise UserError(f"jitter needs 4 values (brightness, contrast, saturation, hue), "
                            f"got {list(value)}")
        return cls(*(float(v) for v in value))


DEFAULT_JITTER = Jitter()  # the released ColorJitter(0.2, 0.2, 0.2, 0.1)
NO_JITTER = Jitter(0.0, 0.0, 0.0, 0.0)
_JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


class CropBox(NamedTuple):
    """Where ``random_crop_pad`` copied from (src) and to (dst), and the copied extent."""

    src_top: int
    src_left: int
    dst_top: int
    dst_left: int
    height: int
    width: int


def color_jitter(img: Image.Image, rng: np.random.Generator, jitter: Jitter) -> Image.Image:
    """Brightness, contrast, saturation and hue jitter in a random order (as ColorJitter).

    Always consumes the same draws (a permutation of 4, then 4 uniforms), whatever the strengths,
    so switching one op off does not shift the rest of the sample's random stream.
    """
    order = rng.permutation(4)
    strengths = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in strengths[:3]]
    factors.append(rng.uniform(-jitter.hue, jitter.hue))
    for k in order:
        if strengths[k] > 0:
            img = _JITTER_OPS[k](img, float(factors[k]))
    return img


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def long_side_size(width: int, height: int, long: int) -> tuple[int, int]:
    """(width, height) after scaling the long side to ``long``.

    The height is the long side only if width < height strictly; a square scales by its width.
    """
    if width < height:
        return round(width * long / height), long
    return long, round(height * long / width)


def resize_long(img: Image.Image, long: int) -> Image.Image:
    """Bicubic resize so that the long side (``long_side_size`` rule) equals ``long``."""
    return img.resize(long_side_size(img.width, img.height, long), Image.Resampling.BICUBIC)


def random_resize_long(img: Image.Image, rng: np.random.Generator,
                       min_long: int, max_long: int) -> Image.Image:
    """``resize_long`` to an integer length drawn uniformly from [min_long, max_long]."""
    return resize_long(img, int(rng.integers(min_long, max_long, endpoint=True)))


def rescale(img: Image.Image, scale: float) -> Image.Image:
    """Bicubic resize to (round(W*scale), round(H*scale)), >= 1 pixel a side (METHOD.md 1.6)."""
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


@functools.lru_cache(maxsize=8)
def _normalize_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(256, 3) float32 table of (v/255 - mean_c)/std_c, computed in float64 and rounded once."""
    v = np.arange(256, dtype=np.float64)[:, None] / 255.0
    return ((v - np.asarray(mean)) / np.asarray(std)).astype(np.float32)


def normalize(img: Image.Image, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """PIL RGB (W x H) -> (H, W, 3) float32 of (x/255 - mean)/std.

    Bit-identical to the released float64 result cast to float32 by the training loop; a lookup
    table per channel makes it several times faster than float64 arithmetic.
    """
    arr = np.asarray(img, dtype=np.uint8)
    lut = _normalize_lut(tuple(mean), tuple(std))
    out = np.empty(arr.shape, np.float32)
    for c in range(3):
        np.take(lut[:, c], arr[..., c], out=out[..., c])
    return out


def _crop_axis(side: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source offset, destination offset, length) along one axis."""
    if side > crop:
        return int(rng.integers(0, side - crop, endpoint=True)), 0, crop
    return 0, int(rng.integers(0, crop - side, endpoint=True)), side


def random_crop_pad(arr: np.ndarray, crop: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, CropBox]:
    """Random ``crop`` x ``crop`` window of an (H, W, C) array, zero-padded where it is smaller.

    Each axis on its own: a longer side gets a random source offset, a shorter (or equal) side
    is copied whole to a random destination offset in the zero container (METHOD.md 1.3 step 4).
    Returns the (crop, crop, C) float32 container and the box used.
    """
    src_top, dst_top, h = _crop_axis(arr.shape[0], crop, rng)
    src_left, dst_left, w = _crop_axis(arr.shape[1], crop, rng)
    out = np.zeros((crop, crop, arr.shape[2]), np.float32)
    out[dst_top:dst_top + h, dst_left:dst_left + w] = arr[src_top:src_top + h,
                                                          src_left:src_left + w]
    return out, CropBox(src_top, src_left, dst_top, dst_left, h, w)


def view_source(img: Image.Image, view_min_side: int) -> Image.Image:
    """The image views are cut from: squared to ``view_min_side`` (bilinear) if a side is smaller.

    The square resize ignores the aspect ratio, as released (quirk Q27).
    """
    if img.width < view_min_side or img.height < view_min_side:
        return img.resize((view_min_side, view_min_side), Image.Resampling.BILINEAR)
    return img


def draw_view_corners(height: int, width: int, view_size: int,
                      rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Top-left corners (i1, j1, i2, j2) of two ``view_size`` boxes that overlap.

    Both corners are uniform over all valid positions and are redrawn together until the
    intersection has positive height and width (METHOD.md 1.4).
    """
    if height < view_size or width < view_size:
        raise ValueError(f"view size {view_size} does not fit in a {height}x{width} image")
    high = np.array([height, width, height, width]) - view_size
    while True:
        i1, j1, i2, j2 = (int(v) for v in rng.integers(0, high, endpoint=True))
        if abs(i1 - i2) < view_size and abs(j1 - j2) < view_size:
            return i1, j1, i2, j2


def overlap_coords(i1: int, j1: int, i2: int, j2: int,
                   view_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """coord1 = (t1, l1, h_o, w_o) and coord2 = (t2, l2, h_o, w_o): the boxes' intersection in
    each view's local pixel coordinates (METHOD.md 1.4)."""
    top, left = max(i1, i2), max(j1, j2)
    h_o, w_o = view_size - abs(i1 - i2), view_size - abs(j1 - j2)
    return (top - i1, left - j1, h_o, w_o), (top - i2, left - j2, h_o, w_o)


def two_views(img: Image.Image, rng: np.random.Generator, view_size: int, view_min_side: int,
              jitter: Jitter = DEFAULT_JITTER, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """Two overlapping, independently jittered views of ``img`` (METHOD.md 1.4).

    Returns view1, view2 as (view_size, view_size, 3) float32 normalised arrays and their
    overlap coordinates coord1, coord2 (see ``overlap_coords``). The released ``ori_coord``
    (overlap in the source frame) is never used in training and is not produced.
    """
    src = view_source(img, view_min_side)
    i1, j1, i2, j2 = draw_view_corners(src.height, src.width, view_size, rng)
    views = []
    for i, j in ((i1, j1), (i2, j2)):
        crop = src.crop((j, i, j + view_size, i + view_size))
        views.append(normalize(color_jitter(crop, rng, jitter), mean, std))
    coord1, coord2 = overlap_coords(i1, j1, i2, j2, view_size)
    return views[0], views[1], coord1, coord2
