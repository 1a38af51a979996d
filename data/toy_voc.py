"""Built-in toy PASCAL VOC: a small synthetic data set in the exact VOC 2012 layout.

``python -m data.toy_voc --out DIR --seed N`` writes ``JPEGImages/``, ``SegmentationClass/``
(VOC palette, 255 on a 2-px band along every object border), ``ImageSets/Segmentation/``
``{train_aug,train,val}.txt`` and ``cls_labels.npy``, so every tool runs on it unchanged.

Design. All 20 VOC classes; each has its own shape AND its own high-contrast texture, both
rotated together by at most +-10 deg (so the four stripe orientations stay apart):

    class        shape      texture                        period (px)
    aeroplane    triangle   stripes at 45 deg               8
    bicycle      dumbbell   crosshatch (grid at 45 deg)    12
    bird         chevron    horizontal zig-zag bands       12
    boat         boat       wavy vertical bands            12
    bottle       capsule    horizontal stripes              8
    bus          house      bricks                         16
    car          car        checkerboard                    9
    cat          disc       concentric rings               12
    chair        L          stripes at 135 deg              8
    cow          crescent   hexagonal dot grid             16
    diningtable  T          horizontal stripes             15
    dog          star       hexagonal dot grid              9
    horse        arrow      stripes at 45 deg              15
    motorbike    ring       16 radial spokes               12 (at r = 30 px)
    person       plus       vertical stripes                8
    pottedplant  trapezoid  vertical stripes               15
    sheep        heart      checkerboard                   16
    sofa         U          stripes at 135 deg             15
    train        hexagon    diamond checker (45 deg)       14
    tvmonitor    frame      grid of thin lines (the hole shows background)  12

Periods are for an image whose long side is 170 px and scale with the image's long side (+-5%
per object), so a pipeline that resizes the long side to a fixed range sees the same periods
whatever the original size. The "fine" (8-9) and "coarse" (15-16) variants of a family are
1.7-1.9x apart, so they stay apart under any long-side range narrower than that (128-160 px:
1.25x; the 4 stripe orientations, 45 deg apart, survive the +-10 deg rotation).

An object's two colours come from the same uniform RGB distribution as the background (with a
large grey-level difference between them), so colour carries no class information. Backgrounds
are smooth random colour fields with pixel noise, soft blobs and thin lines. Distractors
(background, 0 in the mask) carry no periodic texture: plain, speckled or smoothly graded
polygons, ellipses and class outlines (the shape alone never makes an object), and thin lines; a
few small ones are drawn over the objects and occlude them.

Each image holds 1, 2 or 3 objects of distinct classes (exactly 20/40/40% of every split), each
30-55% of the image's short side; later ones may occlude earlier ones, but every object keeps at
least 4% of the image visible outside the ignore band (when random placement fails, the objects
go unrotated into the cells of a grid). An image-level label is positive iff its class has
visible pixels in the mask. Classes are planned before drawing: every image takes the classes
used least so far in its split (ties at random), so per-split counts differ by at most one -
with the default sizes each class is in >= 6 of the 60 train and val images and >= 33 of the
300 train_aug ones.

The plan draws from ``Generator(PCG64([seed, n_images]))`` and every image from its own
``Generator(PCG64([seed, index]))``, so the output is byte-identical for a given seed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from data.voc import CLASS_NAMES, NUM_CLASSES, save_label_png
from tool.common.errors import UserError, cli_main
from tool.common.fileio import atomic_save, current_umask, save_npy_dict, save_text

CLASSES = (  # (VOC class index, shape, texture, period in px at REF_LONG; spokes: nominal)
    (1, "triangle", "stripes45", 8.0), (2, "dumbbell", "crosshatch", 12.0),
    (3, "chevron", "zigzag", 12.0), (4, "boat", "waves", 12.0),
    (5, "capsule", "stripes0", 8.0), (6, "house", "bricks", 16.0),
    (7, "car", "checker", 9.0), (8, "disc", "rings", 12.0),
    (9, "L", "stripes135", 8.0), (10, "crescent", "dots", 16.0),
    (11, "T", "stripes0", 15.0), (12, "star", "dots", 9.0),
    (13, "arrow", "stripes45", 15.0), (14, "ring", "spokes", 12.0),
    (15, "plus", "stripes90", 8.0), (16, "trapezoid", "stripes90", 15.0),
    (17, "heart", "checker", 16.0), (18, "U", "stripes135", 15.0),
    (19, "hexagon", "diamonds", 14.0), (20, "frame", "grid", 12.0),
)
_BY_NAME = {c[0]: c for c in CLASSES}
REF_LONG = 170  # long side (px) at which the periods in CLASSES hold
OBJECT_SHARES = (0.2, 0.4, 0.4)  # share of images with 1, 2, 3 objects
SIZE_FRAC = (0.3, 0.55)  # object extent as a share of the image's short side
MAX_ROTATION = np.deg2rad(10.0)
MIN_VISIBLE = 0.04  # smallest visible (non-ignore) share of the image an object may keep
PLACE_TRIES = 30  # random placements per object before falling back to the grid
SIZE_RANGE = (120, 220)
SPOKES = 16
_CENTRED = frozenset({"rings", "spokes"})  # textures with a centre, kept near the object's
_K3 = np.ones((3, 3), np.uint8)
T = TypeVar("T")


# ---------------------------------------------------------------- shapes (unit box, y down)
def _ngon(n: int, r_out: float, r_in: float | None = None, start: float = -np.pi / 2):
    """Regular n-gon, or an n-point star when ``r_in`` is given."""
    k = 2 * n if r_in else n
    a = start + np.arange(k) * 2 * np.pi / k
    r = np.where(np.arange(k) % 2, r_in, r_out) if r_in else np.full(k, r_out)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _arc(r: float, cx: float = 0.0, cy: float = 0.0, a0: float = 0.0,
         a1: float = 2 * np.pi, n: int = 48) -> np.ndarray:
    """A disc (or, for a partial arc, the segment closed by its chord)."""
    a = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * np.pi - 1e-9)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], float)


def _capsule(r: float = 0.24) -> np.ndarray:
    a = np.linspace(0, np.pi, 16)
    top = np.stack([r * np.cos(a), r - 0.5 - r * np.sin(a)], 1)
    return np.concatenate([top, -top])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    p = np.stack([16 * np.sin(t) ** 3,
                  -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    p -= (p.max(0) + p.min(0)) / 2
    return p / (p.max(0) - p.min(0)).max()


def _poly(*xy: float) -> np.ndarray:
    return np.array(xy, float).reshape(-1, 2)


SHAPES = {  # name -> layers (polygon, 1 = fill or 0 = cut), drawn in order inside the unit box
    "triangle": [(_poly(0, -.5, .5, .4, -.5, .4), 1)],
    "dumbbell": [(_arc(.25, -.25), 1), (_arc(.25, .25), 1), (_box(-.25, -.1, .25, .1), 1)],
    "chevron": [(_poly(-.5, -.45, 0, -.05, .5, -.45, .5, .05, 0, .45, -.5, .05), 1)],
    "boat": [(_arc(.5, 0, 0, 0, np.pi, 24), 1), (_poly(.04, -.5, .04, 0, .42, 0), 1),
             (_poly(-.04, -.4, -.04, 0, -.34, 0), 1)],
    "capsule": [(_capsule(), 1)],
    "house": [(_poly(-.42, .5, -.42, -.05, 0, -.5, .42, -.05, .42, .5), 1)],
    "car": [(_poly(-.5, .3, .5, .3, .5, -.05, .25, -.05, .12, -.35, -.2, -.35, -.32, -.05,
                   -.5, -.05), 1)],
    "disc": [(_arc(.5), 1)],
    "L": [(_poly(-.5, -.5, -.12, -.5, -.12, .14, .5, .14, .5, .5, -.5, .5), 1)],
    "crescent": [(_arc(.5), 1), (_arc(.4, .22, -.14), 0)],
    "T": [(_poly(-.5, -.5, .5, -.5, .5, -.14, .18, -.14, .18, .5, -.18, .5, -.18, -.14,
                 -.5, -.14), 1)],
    "star": [(_ngon(5, .5, .28), 1)],
    "arrow": [(_poly(-.5, -.18, .02, -.18, .02, -.46, .5, 0, .02, .46, .02, .18, -.5, .18), 1)],
    "ring": [(_arc(.5), 1), (_arc(.27), 0)],
    "plus": [(_poly(-.18, -.5, .18, -.5, .18, -.18, .5, -.18, .5, .18, .18, .18, .18, .5,
                    -.18, .5, -.18, .18, -.5, .18, -.5, -.18, -.18, -.18), 1)],
    "trapezoid": [(_poly(-.5, -.4, .5, -.4, .3, .45, -.3, .45), 1)],
    "heart": [(_heart(), 1)],
    "U": [(_poly(-.5, -.5, -.16, -.5, -.16, .18, .16, .18, .16, -.5, .5, -.5, .5, .5,
                 -.5, .5), 1)],
    "hexagon": [(_ngon(6, .5, start=0.0), 1)],
    "frame": [(_box(-.5, -.5, .5, .5), 1), (_box(-.22, -.22, .22, .22), 0)],
}


def _fill(mask: np.ndarray, poly: np.ndarray, value: int) -> None:
    # 4 fractional bits: sub-pixel vertices, still deterministic integer rasterisation
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], value, cv2.LINE_8, shift=4)


def shape_mask(shape: str, hw: tuple[int, int], centre, size: float, angle: float,
               stretch: float = 1.0) -> np.ndarray:
    """Boolean mask of ``shape`` scaled to ``size`` px, stretched along x, rotated, placed."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * size
    rot[:, 0] *= stretch
    mask = np.zeros(hw, np.uint8)
    for poly, value in SHAPES[shape]:
        _fill(mask, poly @ rot.T + centre, value)
    return mask.astype(bool)


FILL = {k: float(shape_mask(k, (256, 256), (128, 128), 256, 0.0).mean()) for k in SHAPES}


# ---------------------------------------------------------------- textures
def _stripes(x: np.ndarray, period: float, duty: float = 0.5) -> np.ndarray:
    return (x / period) % 1.0 < duty


def _across(u: np.ndarray, v: np.ndarray, deg: float) -> np.ndarray:
    """Coordinate across bands that run at ``deg`` (counter-clockwise on screen, v down)."""
    t = np.deg2rad(deg)
    return u * np.sin(t) + v * np.cos(t)


def _checker(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return (np.floor(2 * u / p) + np.floor(2 * v / p)) % 2 == 1


def _grid(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return _stripes(u, p, 0.3) | _stripes(v, p, 0.3)


def _dots(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    """Dots on a hexagonal lattice (spacing p): unlike a square one, it shares no frequencies
    with the checkers and grids. The nearest row is the dot's row, as its radius < half the
    row pitch."""
    pitch = p * np.sqrt(3) / 2
    row = np.round(v / pitch)
    du = u / p - 0.5 * (row % 2)
    du = (du - np.round(du)) * p
    dv = v - row * pitch
    return du * du + dv * dv < (0.32 * p) ** 2


def _zigzag(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    tri = np.abs((u / (1.2 * p)) % 1.0 - 0.5)  # 45-deg segments, 0.6 p peak to peak
    return _stripes(v + 1.2 * p * tri, p)


def _bricks(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    """Mortar: rows p/2 high, bricks p long, every other row shifted by half a brick."""
    row = np.floor(2 * v / p)
    return _stripes(v, p / 2, 0.3) | _stripes(u + row * p / 2, p, 0.15)


PATTERNS = {  # name -> binary pattern of (u, v, period)
    **{f"stripes{d}": (lambda u, v, p, d=d: _stripes(_across(u, v, d), p))
       for d in (0, 45, 90, 135)},
    "checker": _checker,
    "diamonds": lambda u, v, p: _checker(_across(u, v, 45), _across(u, v, 135), p),
    "dots": _dots,
    "grid": _grid,
    "crosshatch": lambda u, v, p: _grid(_across(u, v, 45), _across(u, v, 135), p),
    "rings": lambda u, v, p: _stripes(np.hypot(u, v), p),
    "spokes": lambda u, v, p: _stripes(np.arctan2(v, u), 2 * np.pi / SPOKES),  # p unused
    "zigzag": _zigzag,
    "waves": lambda u, v, p: _stripes(u + 0.3 * p * np.sin(np.pi * v / p), p),
    "bricks": _bricks,
}


def texture(name: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Binary pattern in object coordinates (u right, v down, px); random phase is in u, v."""
    if name not in PATTERNS:
        raise ValueError(f"unknown texture {name}")
    return PATTERNS[name](u, v, period)


def _coords(hw: tuple[int, int], centre, angle: float):
    """Pixel grid in a frame centred on ``centre`` and rotated by ``angle``."""
    y, x = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    x, y = x - centre[0], y - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two uniform RGB colours whose grey levels differ enough for a high-contrast texture."""
    while True:
        a, b = rng.uniform(0, 255, (2, 3))
        if abs(a @ (0.299, 0.587, 0.114) - b @ (0.299, 0.587, 0.114)) > 80:
            return a, b


# ---------------------------------------------------------------- background and distractors
def background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Smooth random colour field, soft blobs, thin lines (float32 H x W x 3)."""
    h, w = hw
    coarse = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 5)):  # soft blobs
        blob = np.zeros(hw, np.float32)
        axes = (int(rng.integers(8, w // 3)), int(rng.integers(8, h // 3)))
        cv2.ellipse(blob, (int(rng.integers(w)), int(rng.integers(h))), axes,
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), 4)[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 255, 3).astype(np.float32)
    _lines(img, rng, rng.integers(3, 8))
    return img


def _lines(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` thin random lines; return their union as a boolean mask."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n):
        p, q = rng.integers(0, (w, h), (2, 2))
        one = cv2.line(np.zeros_like(mask), tuple(map(int, p)), tuple(map(int, q)), 1,
                       int(rng.integers(1, 3)))
        img[one > 0] = rng.uniform(0, 255, 3)
        mask |= one
    return mask > 0


def distractor(img: np.ndarray, rng: np.random.Generator,
               scale: tuple[float, float]) -> np.ndarray:
    """Paint one non-class shape (size ``scale`` x short side) onto ``img``; return its mask.
    Never a periodic texture: plain, speckled or a smooth two-colour gradient."""
    hw = img.shape[:2]
    kind = rng.choice(["polygon", "ellipse", "outline", "speckle", "gradient", "lines"],
                      p=[.2, .17, .2, .16, .17, .10])
    if kind == "lines":
        return _lines(img, rng, rng.integers(1, 4))
    size = rng.uniform(*scale) * min(hw)
    centre = rng.uniform(0, 1, 2) * (hw[1], hw[0])
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "ellipse":
        mask = shape_mask("disc", hw, centre, size, angle, rng.uniform(0.4, 1.0))
    elif kind == "outline":  # the shape alone must not make an object
        shape = str(rng.choice(list(SHAPES)))
        mask = shape_mask(shape, hw, centre, size, angle, rng.uniform(0.8, 1.2))
    else:  # random star-shaped polygon
        k = int(rng.integers(3, 8))
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.25, 0.5, k)
        mask = np.zeros(hw, np.uint8)
        _fill(mask, size * np.stack([r * np.cos(a), r * np.sin(a)], 1) + centre, 1)
        mask = mask.astype(bool)
    if kind == "gradient":
        t = np.clip(_coords(hw, centre, angle)[0][mask] / size + 0.5, 0, 1)[:, None]
        a, b = rng.uniform(0, 255, (2, 3))
        img[mask] = a + t * (b - a)
    else:
        img[mask] = rng.uniform(0, 255, 3)
        if kind == "speckle" or (kind == "outline" and rng.random() < 0.5):
            img[mask] += rng.normal(0, 30, (int(mask.sum()), 3))
    return mask


# ---------------------------------------------------------------- layout
def _visible(inst: np.ndarray, k: int) -> int:
    """Pixels of instance ``k`` outside the ignore band (the band is where a 3x3 window sees
    another instance id, so these are exactly the eroded instance pixels)."""
    return int(cv2.erode((inst == k).astype(np.uint8), _K3).sum())


def _all_visible(inst: np.ndarray, n: int, min_px: float) -> bool:
    return all(_visible(inst, k) >= min_px for k in range(1, n + 1))


def _object_size(rng: np.random.Generator, shape: str, hw: tuple[int, int]) -> float:
    """Extent in px: SIZE_FRAC of the short side, large enough that sparse shapes still cover
    1.5 x MIN_VISIBLE of the image."""
    short = min(hw)
    lo = np.sqrt(1.5 * MIN_VISIBLE * hw[0] * hw[1] / FILL[shape]) / short
    return float(rng.uniform(np.clip(lo, SIZE_FRAC[0], SIZE_FRAC[1] - 0.05), SIZE_FRAC[1]) * short)


Layout = tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, float]]]


def _random_layout(rng: np.random.Generator, hw: tuple[int, int], shapes: Sequence[str],
                   min_px: float) -> Layout | None:
    """(instance map, [(mask, centre, angle)]) with every object visible, or None when one of
    them finds no place in PLACE_TRIES draws."""
    inst, placed = np.zeros(hw, np.uint8), []
    for k, shape in enumerate(shapes, 1):
        for _ in range(PLACE_TRIES):
            size = _object_size(rng, shape, hw)
            angle, stretch = rng.uniform(-MAX_ROTATION, MAX_ROTATION), rng.uniform(0.85, 1.15)
            centre = rng.uniform(0.3 * size, (hw[1] - 0.3 * size, hw[0] - 0.3 * size))
            mask = shape_mask(shape, hw, centre, size, angle, stretch)
            trial = np.where(mask, k, inst).astype(np.uint8)
            if _all_visible(trial, k, min_px):
                break
        else:
            return None
        inst = trial
        placed.append((mask, centre, angle))
    return inst, placed


def _grid_layout(hw: tuple[int, int], shapes: Sequence[str]) -> Layout:
    """Fallback of ``_random_layout``: unrotated objects in the cells of the grid with the
    largest cells. They never overlap, so each keeps its whole area."""
    h, w, n = hw[0], hw[1], len(shapes)
    rows, cols = max(((r, -(-n // r)) for r in range(1, n + 1)),
                     key=lambda rc: min(h / rc[0], w / rc[1]))
    size = min(0.92 * min(h / rows, w / cols), SIZE_FRAC[1] * min(hw))
    inst, placed = np.zeros(hw, np.uint8), []
    for k, shape in enumerate(shapes):
        centre = np.array([(k % cols + 0.5) * w / cols, (k // cols + 0.5) * h / rows])
        mask = shape_mask(shape, hw, centre, size, 0.0)
        inst[mask] = k + 1
        placed.append((mask, centre, 0.0))
    return inst, placed


# ---------------------------------------------------------------- composition
def _paint_object(img: np.ndarray, mask: np.ndarray, cls: int, centre, angle: float,
                  rng: np.random.Generator) -> None:
    """Fill ``mask`` with the class texture (scaled with the image, random phase) in two
    colours."""
    _, _, tex, period = _BY_NAME[cls]
    period *= max(mask.shape) / REF_LONG * rng.uniform(0.95, 1.05)
    u, v = _coords(mask.shape, centre, angle)
    if tex in _CENTRED:  # keep the centre of rings and spokes near the object's
        du, dv = rng.uniform(-0.15, 0.15, 2) * period
    else:
        du, dv = rng.uniform(0, period, 2)
    pattern = texture(tex, u + du, v + dv, period)
    a, b = _colour_pair(rng)
    img[mask] = np.where(pattern[mask, None], a, b)


def compose(rng: np.random.Generator, hw: tuple[int, int],
            classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H x W x 3) holding one object of each VOC class in ``classes`` (drawn in
    that order), and its VOC label map (uint8, 255 on object borders)."""
    img = background(rng, hw)
    for _ in range(rng.integers(3, 8)):
        distractor(img, rng, (0.2, 0.6))
    shapes = [_BY_NAME[c][1] for c in classes]
    min_px = MIN_VISIBLE * hw[0] * hw[1]
    inst, placed = _random_layout(rng, hw, shapes, min_px) or _grid_layout(hw, shapes)
    for cls, (mask, centre, angle) in zip(classes, placed):
        _paint_object(img, mask, cls, centre, angle, rng)
    for _ in range(rng.binomial(2, 0.25)):  # small occluders on top, if all objects stay visible
        trial, cand = inst.copy(), img.copy()
        trial[distractor(cand, rng, (0.1, 0.25))] = 0
        if _all_visible(trial, len(classes), min_px):
            inst, img = trial, cand
    img = cv2.GaussianBlur(img, (3, 3), 0.6) + rng.normal(0, rng.uniform(3, 9), img.shape)
    label = np.asarray([0, *classes], np.uint8)[inst]
    label[cv2.dilate(inst, _K3) != cv2.erode(inst, _K3)] = 255
    return np.clip(img, 0, 255).round().astype(np.uint8), label


def labels_from_mask(label: np.ndarray) -> np.ndarray:
    """(20,) float32 multi-hot: class c is positive iff the mask has a pixel of value c."""
    present = np.bincount(label.ravel(), minlength=256)[1:NUM_CLASSES] > 0
    return present.astype(np.float32)


# ---------------------------------------------------------------- class plan
def _object_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Objects per image for ``n`` images: exactly OBJECT_SHARES hold 1, 2, 3; shuffled."""
    ends = np.round(np.cumsum(OBJECT_SHARES) * n).astype(int)
    return rng.permutation(np.repeat([1, 2, 3], np.diff(ends, prepend=0)))


def _balanced(rng: np.random.Generator, n: int, used: np.ndarray) -> list[list[int]]:
    """Classes of ``n`` images: each takes its k least-used classes (ties at random), so the
    counts in ``used`` (updated in place) never drift more than one apart."""
    out = []
    for k in _object_counts(rng, n):
        pick = np.lexsort((rng.random(len(used)), used))[:k]
        used[pick] += 1
        out.append([int(CLASSES[i][0]) for i in rng.permutation(pick)])
    return out


def plan_classes(seed: int, n_train_aug: int, n_train: int,
                 n_val: int) -> tuple[list[int], list[list[int]]]:
    """The train subset (sorted indices into train_aug) and every image's VOC classes
    (train_aug images first, then val). train and val are balanced on their own; the rest of
    train_aug continues from train's counts, so train_aug is balanced as a whole."""
    rng = np.random.Generator(np.random.PCG64([seed, n_train_aug + n_val]))
    train = sorted(int(i) for i in rng.choice(n_train_aug, n_train, replace=False))
    rest = sorted(set(range(n_train_aug)) - set(train))
    used = np.zeros(len(CLASSES), np.int64)
    plan = dict(zip(train, _balanced(rng, len(train), used)))
    plan.update(zip(rest, _balanced(rng, len(rest), used)))
    val = _balanced(rng, n_val, np.zeros(len(CLASSES), np.int64))
    return train, [plan[i] for i in range(n_train_aug)] + val


# ---------------------------------------------------------------- outputs
def _check_args(seed: int, counts: dict[str, int]) -> None:
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    for key, n in counts.items():
        if n < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {n}")
    if counts["n_train"] > counts["n_train_aug"]:
        raise UserError(f"--n-train ({counts['n_train']}) cannot exceed --n-train-aug "
                        f"({counts['n_train_aug']}): train is a subset of train_aug")


def _write_image(root: Path, name: str, seed: int, index: int,
                 classes: Sequence[int]) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    hw = tuple(int(s) for s in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    while hw[0] == hw[1]:  # VOC images are never square
        hw = (hw[0], int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1)))
    img, label = compose(rng, hw, classes)
    atomic_save(root / "JPEGImages" / f"{name}.jpg",
                lambda f: Image.fromarray(img).save(f, format="JPEG", quality=92))
    save_label_png(label, root / "SegmentationClass" / f"{name}.png")
    return labels_from_mask(label)


def _write_all(root: Path, seed: int, n_train_aug: int, n_train: int, n_val: int) -> dict:
    names = [f"2026_{i + 1:06d}" for i in range(n_train_aug + n_val)]
    train, plan = plan_classes(seed, n_train_aug, n_train, n_val)
    cls = {n: _write_image(root, n, seed, i, plan[i]) for i, n in enumerate(names)}
    lists = {"train_aug": names[:n_train_aug], "train": [names[i] for i in train],
             "val": names[n_train_aug:]}
    for key, lst in lists.items():
        save_text(root / "ImageSets" / "Segmentation" / f"{key}.txt", "\n".join(lst) + "\n")
    save_npy_dict(root / "cls_labels.npy", cls)
    return {"lists": lists, "cls": cls}


def build_folder(out: Path, fill: Callable[[Path], T]) -> T:
    """``fill(out)`` when ``out`` exists (its files are overwritten in place); else ``fill`` a
    temporary folder next to it, renamed to ``out`` at the end, so an interrupted run never
    leaves a folder that looks finished. Returns what ``fill`` returns."""
    if out.exists():
        return fill(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        res = fill(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it 0700
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def generate(out_dir: str | os.PathLike, seed: int = 0, n_train_aug: int = 300,
             n_train: int = 60, n_val: int = 60) -> dict:
    """Write the toy VOC set to ``out_dir`` and return a summary dict.

    A missing ``out_dir`` is built under a temporary name and renamed at the end, so an
    interrupted run never leaves a folder that looks finished; in an existing one the files are
    overwritten in place."""
    _check_args(seed, {"n_train_aug": n_train_aug, "n_train": n_train, "n_val": n_val})
    t0, out = time.perf_counter(), Path(out_dir)
    res = build_folder(out, lambda root: _write_all(root, seed, n_train_aug, n_train, n_val))
    labels = np.stack(list(res["cls"].values()))
    freq = {CLASS_NAMES[k]: int(labels[:, k].sum()) for k in np.flatnonzero(labels.sum(0))}
    split_min = {k: int(np.stack([res["cls"][n] for n in v]).sum(0).min())
                 for k, v in res["lists"].items()}
    return {"out_dir": str(out), "counts": {k: len(v) for k, v in res["lists"].items()},
            "classes": list(freq), "class_freq": freq, "split_class_min": split_min,
            "multi_label_ratio": float(np.mean(labels.sum(1) >= 2)),
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Generate the built-in toy PASCAL VOC data set.")
    p.add_argument("--out", required=True, help="output folder (the voc12_root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train-aug", type=int, default=300, help="train_aug images")
    p.add_argument("--n-train", type=int, default=60, help="train images (subset of train_aug)")
    p.add_argument("--n-val", type=int, default=60, help="held-out val images")
    a = p.parse_args(argv)
    s = generate(a.out, a.seed, a.n_train_aug, a.n_train, a.n_val)
    c, m = s["counts"], s["split_class_min"]
    print(f"toy VOC in {s['out_dir']}: train_aug {c['train_aug']}, train {c['train']}, "
          f"val {c['val']}; {len(s['classes'])} classes, each in >= {m['train_aug']}/"
          f"{m['train']}/{m['val']} images; multi-label {s['multi_label_ratio']:.0%}"
          f"; {s['seconds']:.1f} s")
    return s


if __name__ == "__main__":
    cli_main(main)
