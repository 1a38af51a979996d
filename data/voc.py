"""PASCAL VOC 2012 readers: class names, palette, list files, image-level labels, images, masks.

Names are always kept in their underscore form (``2007_000032``), as in MuSCLe/IRN (METHOD.md 1.1).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tool.common.errors import UserError

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CAT_NAMES = ("background",) + CLASS_NAMES  # index 0 = background, c = VOC class c
NUM_FG = len(CLASS_NAMES)  # foreground classes, 20
NUM_CLASSES = NUM_FG + 1  # with background, 21
IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat ``[r, g, b, ...]`` list (PIL ``putpalette`` form)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def parse_list_line(line: str) -> str:
    """One list line -> underscore image name.

    Accepts ``2007_000032`` and ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/...png``:
    the basename of the first token without its extension (METHOD.md 1.1, MuSCLe parsing).
    """
    return os.path.splitext(os.path.basename(line.split()[0]))[0]


def load_img_name_list(path: str | os.PathLike) -> list[str]:
    """Read a list file (either form, blank lines skipped) into underscore names. A name listed
    twice is an error: it would be trained on twice as often and counted twice by the
    evaluator (METHOD.md 1.1)."""
    try:
        with open(path) as f:
            lines = [(i, parse_list_line(ln)) for i, ln in enumerate(f, 1) if ln.strip()]
    except OSError as e:
        raise UserError(f"cannot read list file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"list file {path} is not text") from None
    if not lines:
        raise UserError(f"list file {path} is empty")
    first: dict[str, int] = {}
    for i, name in lines:
        if name in first:
            raise UserError(f"list file {path} names {name} twice (lines {first[name]} and {i})")
        first[name] = i
    return [name for _, name in lines]


def load_cls_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load ``cls_labels.npy``: dict underscore name -> float32 (20,) multi-hot (METHOD.md 1.2)."""
    try:
        d = np.load(path, allow_pickle=True).item()
    except FileNotFoundError:
        raise UserError(f"image-level label file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UserError(f"{path} is not a cls_labels.npy dict ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a cls_labels.npy dict")
    return d


def label_problem(label: object, num_fg: int = NUM_FG) -> str | None:
    """What is wrong with one ``cls_labels`` entry (None: a multi-hot vector, METHOD.md 1.2):
    not numeric, not ``num_fg`` values (20 on VOC, 80 on COCO), NaN, or values other than 0
    and 1."""
    try:
        arr = np.asarray(label)
    except Exception:  # noqa: BLE001 - any object numpy cannot take is a bad entry
        return f"a {type(label).__name__}, not a vector"
    if arr.dtype.kind not in "biuf":
        return f"dtype {arr.dtype}, expected numbers"
    if arr.shape != (num_fg,):
        return f"shape {arr.shape}, expected ({num_fg},)"
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        return "holds NaN"
    if not np.isin(arr, (0, 1)).all():
        return f"values {sorted(set(np.unique(arr).tolist()) - {0, 1})[:3]} besides 0 and 1"
    return None


def lookup_labels(cls_labels: dict, names: list[str], where: str = "cls_labels.npy",
                  num_fg: int = NUM_FG) -> np.ndarray:
    """Stack the (num_fg,) labels of ``names`` into an (N, num_fg) float32 array; an absent
    name or a bad vector (:func:`label_problem`) -> error."""
    out = np.zeros((len(names), num_fg), np.float32)
    for i, n in enumerate(names):
        if n not in cls_labels:
            raise UserError(f"image {n} has no entry in {where}")
        bad = label_problem(cls_labels[n], num_fg)
        if bad is not None:
            raise UserError(f"the label of {n} in {where} is bad: {bad}")
        out[i] = np.asarray(cls_labels[n], np.float32)
    return out


def image_path(voc12_root: str | os.PathLike, name: str) -> Path:
    return Path(voc12_root) / "JPEGImages" / f"{name}.jpg"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB PIL, fully decoded, with a clear error for missing or corrupt files."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a palettised label PNG as its (H, W) uint8 index array (255 = ignore)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"mask {path} is mode {im.mode}, expected a palette or grey PNG")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"mask not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read mask {path}: {e}") from None


def save_label_png(label: np.ndarray, path: str | os.PathLike, palette: bool = True) -> None:
    """Write an (H, W) uint8 label map as a VOC-palette PNG (``palette``) or as a grey ('L')
    PNG of the same indices (IRN's and MuSCLe's files), atomically. COCO's labels 0..80 use
    the same palette (data/coco.py: its 256 colours are distinct)."""
    from tool.common.fileio import atomic_save

    im = Image.fromarray(np.asarray(label, np.uint8), mode="P" if palette else "L")
    if palette:
        im.putpalette(voc_palette())
    atomic_save(path, lambda f: im.save(f, format="PNG"))
