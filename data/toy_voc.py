"""Built-in toy PASCAL VOC: a small synthetic data set in the exact VOC 2012 layout.

``python -m data.toy_voc --out DIR --seed N`` writes ``JPEGImages/``, ``SegmentationClass/``
(VOC palette, 255 on a 2-px band along every object border), ``ImageSets/Segmentation/``
``{train_aug,train,val}.txt`` and ``cls_labels.npy``, so every tool runs on it unchanged.

Design. Eight VOC classes; each has its own shape AND its own high-contrast texture
(period 6-8 px), both rotated together by a small random angle:

    aeroplane  triangle        diagonal stripes (45 deg)
    bottle     tall capsule    horizontal stripes
    car        car silhouette  checkerboard
    cat        disc            concentric rings
    dog        five-point star dot grid
    person     plus sign       vertical stripes
    train      hexagon         zig-zag bands
    tvmonitor  square frame    grid of thin lines (the hole shows background)

An object's two colours come from the same uniform RGB distribution as the background, so colour
carries no class information. Backgrounds are smooth random colour fields with pixel noise,
soft blobs and thin lines. Distractors (background, 0 in the mask) are plain or speckled
polygons and ellipses (some share a class's outline but not its texture), random polygons with
coarse bands (period 16-24 px, far from every class period) and thin lines; a few small ones
are drawn over the objects and occlude them. Each image holds 1-3 objects that may overlap
(later ones occlude earlier ones); every object keeps at least 3% of the image visible outside
the ignore band, and an image-level label is positive iff its class has visible pixels in the
mask.

Every image draws from its own ``Generator(PCG64([seed, index]))``, so the output is
byte-identical for a given seed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.voc import CLASS_NAMES, save_label_png
from tool.errors import UserError, cli_main
from tool.fileio import atomic_save, save_npy_dict, save_text

CLASSES = (  # (VOC class index, shape, texture, texture period in px)
    (1, "triangle", "diagonal", 7.0), (5, "capsule", "hstripes", 6.0),
    (7, "car", "checker", 8.0), (8, "disc", "rings", 7.0), (12, "star", "dots", 8.0),
    (15, "plus", "vstripes", 6.0), (19, "hexagon", "zigzag", 8.0), (20, "frame", "grid", 8.0),
)
MIN_VISIBLE = 0.03  # smallest visible (non-ignore) share of the image an object may keep
SIZE_RANGE = (120, 220)
_K3 = np.ones((3, 3), np.uint8)


# ---------------------------------------------------------------- shapes (unit box, y down)
def _ngon(n: int, r_out: float, r_in: float | None = None, start: float = -np.pi / 2):
    """Regular n-gon, or an n-point star when ``r_in`` is given."""
    k = 2 * n if r_in else n
    a = start + np.arange(k) * 2 * np.pi / k
    r = np.where(np.arange(k) % 2, r_in, r_out) if r_in else np.full(k, r_out)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _capsule() -> np.ndarray:
    a = np.linspace(0, np.pi, 16)
    top = np.stack([0.22 * np.cos(a), -0.28 - 0.22 * np.sin(a)], 1)
    return np.concatenate([top, -top])


_plus = [(-.18, -.5), (.18, -.5), (.18, -.18), (.5, -.18), (.5, .18), (.18, .18), (.18, .5),
         (-.18, .5), (-.18, .18), (-.5, .18), (-.5, -.18), (-.18, -.18)]
_car = [(-.5, .25), (.5, .25), (.5, -.05), (.25, -.05), (.12, -.3), (-.2, -.3), (-.32, -.05),
        (-.5, -.05)]
SHAPES = {  # name -> (outline, hole or None)
    "triangle": (np.array([(0, -.5), (.5, .4), (-.5, .4)]), None),
    "capsule": (_capsule(), None), "car": (np.array(_car), None), "disc": (_ngon(48, .5), None),
    "star": (_ngon(5, .5, .25), None), "plus": (np.array(_plus), None),
    "hexagon": (_ngon(6, .5, start=0.0), None),
    "frame": (_ngon(4, .5 * 2 ** .5, start=np.pi / 4), _ngon(4, .22 * 2 ** .5, start=np.pi / 4)),
}


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


FILL = {k: _area(o) - (_area(h) if h is not None else 0.0) for k, (o, h) in SHAPES.items()}


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
    outline, hole = SHAPES[shape]
    _fill(mask, outline @ rot.T + centre, 1)
    if hole is not None:
        _fill(mask, hole @ rot.T + centre, 0)
    return mask.astype(bool)


# ---------------------------------------------------------------- textures
def _stripes(x: np.ndarray, period: float, duty: float = 0.5) -> np.ndarray:
    return (x / period) % 1.0 < duty


def texture(name: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Binary pattern in object coordinates (u right, v down, px); random phase is in u, v."""
    if name == "diagonal":
        return _stripes((u + v) / 2 ** .5, period)
    if name == "hstripes":
        return _stripes(v, period)
    if name == "vstripes":
        return _stripes(u, period)
    if name == "checker":
        return (np.floor(2 * u / period) + np.floor(2 * v / period)) % 2 == 1
    if name == "rings":
        return _stripes(np.hypot(u, v), period)
    if name == "dots":
        du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return du * du + dv * dv < 0.32 ** 2
    if name == "zigzag":
        tri = np.abs((u / (1.2 * period)) % 1.0 - 0.5)
        return _stripes(v + 1.2 * period * tri, period)
    if name == "grid":
        return _stripes(u, period, 0.3) | _stripes(v, period, 0.3)
    raise ValueError(f"unknown texture {name}")


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
        if abs(a @ (0.299, 0.587, 0.114) - b @ (0.299, 0.587, 0.114)) > 70:
            return a, b


def _paint_pattern(img: np.ndarray, mask: np.ndarray, pattern: np.ndarray,
                   rng: np.random.Generator) -> None:
    a, b = _colour_pair(rng)
    img[mask] = np.where(pattern[mask, None], a, b)


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
    """Paint one non-class shape (size ``scale`` x short side) onto ``img``; return its mask."""
    hw = img.shape[:2]
    kind = rng.choice(["polygon", "ellipse", "outline", "speckle", "bands", "lines"],
                      p=[.22, .18, .18, .17, .15, .10])
    if kind == "lines":
        return _lines(img, rng, rng.integers(1, 4))
    size = rng.uniform(*scale) * min(hw)
    centre = rng.uniform(0, 1, 2) * (hw[1], hw[0])
    angle = rng.uniform(0, 2 * np.pi)
    if kind in ("polygon", "bands"):  # random star-shaped polygon
        k = int(rng.integers(3, 8))
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.25, 0.5, k)
        mask = np.zeros(hw, np.uint8)
        _fill(mask, size * np.stack([r * np.cos(a), r * np.sin(a)], 1) + centre, 1)
        mask = mask.astype(bool)
    elif kind == "ellipse":
        mask = shape_mask("disc", hw, centre, size, angle, rng.uniform(0.4, 1.0))
    else:  # a class outline, plain or speckled: the shape alone must not make an object
        shape = str(rng.choice(list(SHAPES)))
        mask = shape_mask(shape, hw, centre, size, angle, rng.uniform(0.8, 1.2))
    if kind == "bands":
        u, _ = _coords(hw, centre, angle)
        _paint_pattern(img, mask, _stripes(u, rng.uniform(16, 24)), rng)
    else:
        img[mask] = rng.uniform(0, 255, 3)
        if kind == "speckle":
            img[mask] += rng.normal(0, 30, (int(mask.sum()), 3))
    return mask


# ---------------------------------------------------------------- composition
def _visible(inst: np.ndarray, k: int) -> int:
    """Pixels of instance ``k`` outside the ignore band (the band is where a 3x3 window sees
    another instance id, so these are exactly the eroded instance pixels)."""
    return int(cv2.erode((inst == k).astype(np.uint8), _K3).sum())


def _all_visible(inst: np.ndarray, n: int, min_px: float) -> bool:
    return all(_visible(inst, k) >= min_px for k in range(1, n + 1))


def _pick_classes(rng: np.random.Generator) -> list[int]:
    """1-3 class ids (indices into CLASSES), mostly distinct; sometimes two instances of one."""
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    ids = [int(c) for c in rng.choice(len(CLASSES), n, replace=False)]
    if n > 1 and rng.random() < 0.1:
        ids[-1] = ids[0]
    return ids


def _place_object(inst: np.ndarray, cid: int, k: int, rng: np.random.Generator, min_px: float):
    """Draw placements until instance ``k`` and the ones below it all stay visible; return
    (new instance map, mask, centre, angle), or None when the object does not fit."""
    hw, shape = inst.shape, CLASSES[cid][1]
    short = min(hw)
    for attempt in range(31):
        area = rng.uniform(0.06, 0.14) * hw[0] * hw[1]
        size = float(np.clip(np.sqrt(area / FILL[shape]), 0.3 * short, 0.6 * short))
        angle, stretch = rng.uniform(-0.26, 0.26), rng.uniform(0.85, 1.15)
        centre = rng.uniform(0.2 * size, (hw[1] - 0.2 * size, hw[0] - 0.2 * size))
        if attempt == 30:  # last resort, first object only: large and centred, always fits
            if k > 1:
                return None
            size, centre = 0.55 * short, np.array([hw[1], hw[0]]) / 2
        mask = shape_mask(shape, hw, centre, size, angle, stretch)
        trial = inst.copy()
        trial[mask] = k
        if attempt == 30 or _all_visible(trial, k, min_px):
            return trial, mask, centre, angle
    return None


def _paint_object(img: np.ndarray, mask: np.ndarray, cid: int, centre, angle: float,
                  rng: np.random.Generator) -> None:
    """Fill ``mask`` with the class texture (random phase, +-10% period) in two colours."""
    _, _, tex, period = CLASSES[cid]
    u, v = _coords(mask.shape, centre, angle)
    du, dv = rng.uniform(0, 2 * period, 2)
    pattern = texture(tex, u + du, v + dv, period * rng.uniform(0.9, 1.1))
    _paint_pattern(img, mask, pattern, rng)


def compose(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H x W x 3) and its VOC label map (uint8, 255 on object borders)."""
    img = background(rng, hw)
    for _ in range(rng.integers(3, 8)):
        distractor(img, rng, (0.2, 0.6))
    inst, cls_of = np.zeros(hw, np.uint8), [0]
    min_px = MIN_VISIBLE * hw[0] * hw[1]
    for cid in _pick_classes(rng):
        placed = _place_object(inst, cid, len(cls_of), rng, min_px)
        if placed is None:
            continue
        inst, mask, centre, angle = placed
        _paint_object(img, mask, cid, centre, angle, rng)
        cls_of.append(CLASSES[cid][0])
    for _ in range(rng.binomial(2, 0.25)):  # small occluders on top, if all objects stay visible
        trial, cand = inst.copy(), img.copy()
        trial[distractor(cand, rng, (0.1, 0.25))] = 0
        if _all_visible(trial, len(cls_of) - 1, min_px):
            inst, img = trial, cand
    img = cv2.GaussianBlur(img, (3, 3), 0.6) + rng.normal(0, rng.uniform(3, 9), img.shape)
    label = np.asarray(cls_of, np.uint8)[inst]
    label[cv2.dilate(inst, _K3) != cv2.erode(inst, _K3)] = 255
    return np.clip(img, 0, 255).round().astype(np.uint8), label


def labels_from_mask(label: np.ndarray) -> np.ndarray:
    """(20,) float32 multi-hot: class c is positive iff the mask has a pixel of value c."""
    present = np.bincount(label.ravel(), minlength=256)[1:21] > 0
    return present.astype(np.float32)


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


def _write_image(root: Path, name: str, seed: int, index: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    hw = tuple(int(s) for s in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    while hw[0] == hw[1]:  # VOC images are never square
        hw = (hw[0], int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1)))
    img, label = compose(rng, hw)
    atomic_save(root / "JPEGImages" / f"{name}.jpg",
                lambda f: Image.fromarray(img).save(f, format="JPEG", quality=92))
    save_label_png(label, root / "SegmentationClass" / f"{name}.png")
    return labels_from_mask(label)


def _write_all(root: Path, seed: int, n_train_aug: int, n_train: int, n_val: int) -> dict:
    names = [f"2026_{i + 1:06d}" for i in range(n_train_aug + n_val)]
    cls = {n: _write_image(root, n, seed, i) for i, n in enumerate(names)}
    split_rng = np.random.Generator(np.random.PCG64([seed, len(names)]))
    train = sorted(split_rng.choice(n_train_aug, n_train, replace=False))
    lists = {"train_aug": names[:n_train_aug], "train": [names[i] for i in train],
             "val": names[n_train_aug:]}
    for key, lst in lists.items():
        save_text(root / "ImageSets" / "Segmentation" / f"{key}.txt", "\n".join(lst) + "\n")
    save_npy_dict(root / "cls_labels.npy", cls)
    return {"lists": lists, "cls": cls}


def generate(out_dir: str | os.PathLike, seed: int = 0, n_train_aug: int = 300,
             n_train: int = 60, n_val: int = 60) -> dict:
    """Write the toy VOC set to ``out_dir`` and return a summary dict.

    A missing ``out_dir`` is built under a temporary name and renamed at the end, so an
    interrupted run never leaves a folder that looks finished; in an existing one the files are
    overwritten in place."""
    _check_args(seed, {"n_train_aug": n_train_aug, "n_train": n_train, "n_val": n_val})
    t0, out = time.perf_counter(), Path(out_dir)
    if out.exists():
        res = _write_all(out, seed, n_train_aug, n_train, n_val)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            res = _write_all(tmp, seed, n_train_aug, n_train, n_val)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    labels = np.stack(list(res["cls"].values()))
    freq = {CLASS_NAMES[k]: int(labels[:, k].sum()) for k in np.flatnonzero(labels.sum(0))}
    return {"out_dir": str(out), "counts": {k: len(v) for k, v in res["lists"].items()},
            "classes": list(freq), "class_freq": freq,
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
    c = s["counts"]
    print(f"toy VOC in {s['out_dir']}: train_aug {c['train_aug']}, train {c['train']}, "
          f"val {c['val']}; {len(s['classes'])} classes; multi-label {s['multi_label_ratio']:.0%}"
          f"; {s['seconds']:.1f} s")
    return s


if __name__ == "__main__":
    cli_main(main)
