"""Stage-3 training samples: an augmented crop and its pseudo label (docs/METHOD.md 14.3).

The pseudo label comes in one of two forms (METHOD.md 14.0 G2):

- ``soft``: ``<label_dir>/<name>.npy``, H x W x C (C = num_classes: 21 on VOC, 81 on COCO;
  float16 as stage 2 writes it), read as float64. The CE target is its argmax; BEACON gets the
  scores themselves.
- ``png``: ``<label_dir>/<name>.png``, palette (or grey) indices, 0 background, 1..C-1 classes,
  255 ignore. The CE target is the indices; BEACON gets their one-hot vectors (METHOD.md 14.4.2.8).

Per sample, in this order (METHOD.md 14.3.1): colour jitter of the image; a rescale of image and
label by one factor s (image PIL bilinear, soft label :func:`resize_soft`, PNG label nearest);
ImageNet normalisation; a random crop/pad to ``crop_size`` with one box; a horizontal flip (done
in the same copy as the crop, :func:`crop_slices`).

Randomness (METHOD.md 14.0 G6, 14.8 S26): where the release drew from Python's ``random`` and,
for the jitter, torch's global RNG, sample ``index`` of epoch ``epoch`` here draws only from the
generator of ``(seed, epoch, index)`` (``data.datasets.sample_rngs``), always in the same order:
jitter (a permutation of 4, then 4 uniforms, ``data.transforms.color_jitter``), the scale, the
crop column, the crop row, the flip. Every draw is made even when its step is switched off, so
switching one off leaves the others unchanged. Call ``set_epoch`` before each epoch.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from data import transforms as T
from data.datasets import EpochDataset, PathLike, sample_rngs
from data.description import describe
from data.voc import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    image_path,
    load_cls_labels,
    load_image,
    load_img_name_list,
    load_mask,
    lookup_labels,
)
from tool.common.errors import UserError
from tool.common.preflight import Problems

MASK_FORMATS = ("soft", "png")
MUSCLE_JITTER = T.Jitter(0.1, 0.1, 0.1, 0.05)  # ColorJitter(0.1, 0.1, 0.1, 0.05), METHOD.md 14.3.1
PAD_LABELS = (0, IGNORE_INDEX)  # 0: padding trained as background (14.8 S2); 255: ignored


def label_path(label_dir: PathLike, name: str, mask_format: str) -> Path:
    """``<label_dir>/<name>.npy`` (soft) or ``<label_dir>/<name>.png`` (png)."""
    return Path(label_dir) / f"{name}.{'npy' if mask_format == 'soft' else 'png'}"


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(H s), round(W s)) with Python's half-to-even ``round``, at least 1 pixel a side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


# --------------------------------------------------------------------------- soft-label resize


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into [0, n) by reflection about the end pixels (d c b | a b c d | c b a),
    scipy's 'mirror' and skimage's 'reflect'; a 1-pixel axis maps everything to 0."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.abs(idx) % period
    return np.where(m >= n, period - m, m)


def _taps(n_in: int, n_out: int, start: int, length: int,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of output pixels start..start+length-1 on one axis: the two source indices
    and the weight of the second. Output pixel x samples the source at f (x + 0.5) - 0.5,
    f = n_in / n_out (pixel centres at half-integers, METHOD.md 14.3.1 step 4.4)."""
    x = (n_in / n_out) * (np.arange(start, start + length) + 0.5) - 0.5
    lo = np.floor(x)
    i0 = lo.astype(np.int64)
    return _mirror(i0, n_in), _mirror(i0 + 1, n_in), x - lo


def resize_soft(mask: np.ndarray, size: tuple[int, int],
                window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Resize an (H, W, C) score map to ``size`` = (h, w) as skimage 0.16's
    ``resize(order=1, mode='reflect', anti_aliasing=True)`` (METHOD.md 14.3.1 step 4.4).

    1. Each axis that shrinks by f = in/out > 1 is blurred with a Gaussian of sigma (f - 1)/2
       (scipy, mode 'mirror', truncate 4); channels are never mixed.
    2. Output pixel (y, x) is the bilinear sample at (f_y (y + 0.5) - 0.5, f_x (x + 0.5) - 0.5)
       with mirrored borders.
    skimage's final clip to the input's range does nothing after bilinear and is left out.
    Blur and interpolation are separable, so the rows are blurred and interpolated before the
    columns are: the column blur then runs on the output rows only. This reorders the sums of
    the reference (differences of the order of 1e-16).

    ``window`` = (top, left, height, width): compute only that part of the output; the result
    equals the full resize cut there, at a fraction of the cost (a crop of a large rescale).
    Returns float64 (height, width, C) (the whole (h, w, C) when ``window`` is None).
    """
    if mask.ndim != 3:
        raise ValueError(f"expected an (H, W, C) array, got shape {mask.shape}")
    h_out, w_out = size
    top, left, h, w = (0, 0, h_out, w_out) if window is None else window
    if min(h_out, w_out) < 1 or top < 0 or left < 0 or top + h > h_out or left + w > w_out:
        raise ValueError(f"bad output size {size} or window {window}")
    src = np.asarray(mask, dtype=np.float64)
    h_in, w_in = src.shape[:2]
    if h_out < h_in:  # anti-aliasing only on shrinking axes
        src = gaussian_filter1d(src, (h_in / h_out - 1) / 2, axis=0, mode="mirror", truncate=4.0)
    r0, r1, wr = _taps(h_in, h_out, top, h)
    wr = wr[:, None, None]
    rows = src[r0] * (1 - wr)  # (h, W, C)
    rows += src[r1] * wr
    if w_out < w_in:
        rows = gaussian_filter1d(rows, (w_in / w_out - 1) / 2, axis=1, mode="mirror",
                                 truncate=4.0)
    c0, c1, wc = _taps(w_in, w_out, left, w)
    wc = wc[None, :, None]
    out = rows[:, c0] * (1 - wc)  # (h, w, C)
    out += rows[:, c1] * wc
    return out


# --------------------------------------------------------------------------------- crop / pad


def crop_axis(side: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """One axis of the crop box: (source offset, destination offset, length). A side longer
    than ``crop`` is cut at an offset uniform in [0, side - crop]; a shorter or equal one is
    copied whole to an offset uniform in [0, crop - side] (METHOD.md 14.3.1 step 6)."""
    if side > crop:
        return int(rng.integers(0, side - crop, endpoint=True)), 0, crop
    return 0, int(rng.integers(0, crop - side, endpoint=True)), side


def draw_crop_box(height: int, width: int, crop: int, rng: np.random.Generator) -> T.CropBox:
    """The crop box of an (height, width) array; the column is drawn before the row."""
    src_left, dst_left, w = crop_axis(width, crop, rng)
    src_top, dst_top, h = crop_axis(height, crop, rng)
    return T.CropBox(src_top, src_left, dst_top, dst_left, h, w)


def crop_slices(box: T.CropBox, crop: int, flip: bool = False,
                ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(source, destination) (row, column) slices of ``box`` in a (crop, crop) container.
    With ``flip`` the destination is mirrored, so ``out[dst] = arr[src][:, ::-1]`` is the crop
    (step 6) followed by the horizontal flip (step 7) of METHOD.md 14.3.1, in one copy."""
    left = crop - box.dst_left - box.width if flip else box.dst_left
    return ((slice(box.src_top, box.src_top + box.height),
             slice(box.src_left, box.src_left + box.width)),
            (slice(box.dst_top, box.dst_top + box.height), slice(left, left + box.width)))


def soft_target(soft: np.ndarray) -> np.ndarray:
    """(H, W, C) scores -> (H, W) int64 argmax; ties go to the lowest index, so an all-zero
    vector (crop padding) is 0 = background (METHOD.md 14.3.2, 14.8 S2)."""
    return np.argmax(soft, axis=-1).astype(np.int64)


def one_hot_soft(target: np.ndarray, padding: np.ndarray, num_classes: int = NUM_CLASSES,
                 ) -> np.ndarray:
    """The BEACON mask of a PNG label (METHOD.md 14.4.2.8): (H, W) indices -> (num_classes,
    H, W) float32 one-hot, the zero vector at 255 and wherever ``padding`` (H, W) bool is set."""
    classes = np.arange(num_classes).reshape(-1, 1, 1)
    return ((target[None] == classes) & ~padding[None]).astype(np.float32)


# ------------------------------------------------------------------------------------ dataset


class SegTrainDataset(EpochDataset):
    """Stage-3 training crops with their pseudo labels (METHOD.md 14.3).

    Args:
        names: image names, or a list file (either VOC list form).
        voc12_root: folder holding ``JPEGImages/``.
        label_dir: folder of the stage-2 pseudo labels, ``<name>.npy`` or ``<name>.png``.
        mask_format: 'soft' (H x W x C npy) or 'png' (indices 0..C-1, 255 = ignore).
        cls_labels: ``cls_labels.npy`` (path or loaded dict) for the ``label`` field, the
            image-level labels BEACON uses (METHOD.md 14.8 S27); None: no ``label`` field.
        crop_size: side S of the square crop (448).
        scale_range: (lo, hi) of the whole-image scale s = lo + u (hi - lo), u ~ U[0, 1);
            None: no rescale.
        jitter: colour-jitter strengths (``data.transforms.Jitter`` or 4 numbers).
        hflip: flip image and label together with probability 0.5.
        pad_label: the target where the crop extends past the image: 0 (background, as
            released, 14.8 S2) or 255 (ignored). The soft mask is the zero vector there either
            way.
        seed: base seed of the per-sample generators.
        mean, std: normalisation (ImageNet).
        num_classes: C, classes with background (21 VOC, 81 COCO, ``data.description``): the
            channels of a soft label, the PNG values 0..C-1, the ``cls_labels`` length C-1.

    ``__getitem__`` returns a dict:
        name (str);
        img (3, S, S) float32, normalised, 0 (the mean colour) in the padding;
        target (S, S) int64: soft -> argmax of ``soft`` (ties to the lowest index), png -> the
            indices (255 kept); ``pad_label`` in the padding;
        soft (C, S, S) float32: the resampled scores (soft) or the one-hot fallback (png),
            the zero vector in the padding (and at 255);
        label (C-1,) float32, when ``cls_labels`` is given.
    The default collate stacks the tensors to (N, ...) and the names to a list.
    """

    def __init__(self, names: Sequence[str] | PathLike, voc12_root: PathLike,
                 label_dir: PathLike, mask_format: str = "soft",
                 cls_labels: Mapping | PathLike | None = None, crop_size: int = 448,
                 scale_range: Sequence[float] | None = (0.5, 1.75),
                 jitter: T.Jitter | Sequence[float] = MUSCLE_JITTER, hflip: bool = True,
                 pad_label: int = 0, seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, num_classes: int = NUM_CLASSES) -> None:
        num_fg = describe(num_classes).num_fg  # an unknown count is a UserError
        names = load_img_name_list(names) if isinstance(names, (str, os.PathLike)) else [*names]
        if not names:
            raise UserError("the image list is empty")
        if mask_format not in MASK_FORMATS:
            raise UserError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        if crop_size <= 0:
            raise UserError(f"crop_size must be > 0, got {crop_size}")
        if scale_range is not None:
            lo, hi = (float(v) for v in scale_range)
            if not 0 < lo <= hi:
                raise UserError(f"scale_range must be [min, max] with 0 < min <= max, got "
                                f"{lo, hi}")
            scale_range = (lo, hi)
        if pad_label not in PAD_LABELS:
            raise UserError(f"pad_label must be 0 or 255, got {pad_label}")
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        labels = None
        if cls_labels is not None:
            where = "cls_labels.npy"
            if not isinstance(cls_labels, Mapping):
                where, cls_labels = str(cls_labels), load_cls_labels(cls_labels)
            labels = lookup_labels(dict(cls_labels), names, where, num_fg=num_fg)
        missing = [p for p in (label_path(label_dir, n, mask_format) for n in names)
                   if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"pseudo label not found: {missing[0]}{more}")

        self.names, self.labels = names, labels
        self.voc12_root, self.label_dir, self.mask_format = voc12_root, label_dir, mask_format
        self.crop_size, self.scale_range = int(crop_size), scale_range
        self.jitter, self.hflip, self.pad_label = T.Jitter.of(jitter), bool(hflip), int(pad_label)
        self.seed, self.epoch = int(seed), 0
        self.mean, self.std = mean, std
        self.num_classes = int(num_classes)

    def check(self, image_sizes: Mapping[str, tuple[int, int] | None] | None = None,
              ) -> list[str]:
        """:func:`check_seg_labels` of this set's names (problem lines, empty when sound)."""
        return check_seg_labels(self.names, self.voc12_root, self.label_dir, self.mask_format,
                                image_sizes, num_classes=self.num_classes)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image (PIL RGB, W x H) and its pseudo label of sample ``index``: soft ->
        (H, W, C) float64, png -> (H, W) uint8. A label of the wrong shape, or a PNG value
        outside 0..C-1 and 255, fails here, naming the file."""
        name = self.names[index]
        img = load_image(image_path(self.voc12_root, name))
        path = label_path(self.label_dir, name, self.mask_format)
        want, n = (img.height, img.width), self.num_classes
        if self.mask_format == "soft":
            try:
                label = np.load(path)
            except FileNotFoundError:
                raise UserError(f"pseudo label not found: {path}") from None
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read pseudo label {path}: {e}") from None
            if label.shape != (*want, n):
                raise UserError(f"soft label {path} has shape {label.shape}, expected "
                                f"{(*want, n)} (its image is {want[1]}x{want[0]}, "
                                f"num_classes {n})")
            return img, label.astype(np.float64)  # float64 as released (METHOD.md 14.3.1)
        label = load_mask(path)
        if label.shape != want:
            raise UserError(f"label {path} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"is {want[1]}x{want[0]}")
        if ((label > n - 1) & (label != IGNORE_INDEX)).any():
            raise UserError(f"label {path} holds values other than {_values(n)}")
        return img, label

    def __getitem__(self, index: int) -> dict:
        out = {"name": self.names[index], **self.transform(*self.load(index), index)}
        if self.labels is not None:
            out["label"] = torch.from_numpy(self.labels[index].copy())
        return out

    def transform(self, img: Image.Image, label: np.ndarray, index: int,
                  ) -> dict[str, torch.Tensor]:
        """Augment sample ``index`` of the current epoch (METHOD.md 14.3.1 steps 3-8).

        img: PIL RGB, W x H; label: (H, W, C) float scores (soft) or (H, W) uint8 indices
        (png). Returns img (3, S, S) float32, target (S, S) int64, soft (C, S, S) float32.
        """
        rng = sample_rngs(self.seed, self.epoch, index)[0]
        crop = self.crop_size
        img = T.color_jitter(img, rng, self.jitter)  # image only, before the rescale
        u = rng.random()
        size = (img.height, img.width)
        if self.scale_range is not None:
            lo, hi = self.scale_range
            size = scaled_size(img.height, img.width, lo + u * (hi - lo))
        box = draw_crop_box(*size, crop, rng)  # from the scaled size alone
        flip = rng.random() < 0.5 and self.hflip
        src, dst = crop_slices(box, crop, flip)
        step = -1 if flip else 1  # columns of the cut windows, flipped or not

        # Containers are zero-filled: the mean colour, the zero score vector (14.8 S2).
        if size != (img.height, img.width):
            img = img.resize(size[::-1], Image.Resampling.BILINEAR)
        arr = T.normalize(img, self.mean, self.std)[src][:, ::step]
        image = np.zeros((3, crop, crop), np.float32)
        image[(slice(None), *dst)] = arr.transpose(2, 0, 1)
        target = np.full((crop, crop), self.pad_label, np.int64)
        if self.mask_format == "soft":
            if size == label.shape[:2]:
                scores = label[src]
            else:  # only the crop window of the rescaled mask is computed
                scores = resize_soft(label, size, (box.src_top, box.src_left, box.height,
                                                   box.width))
            scores = scores[:, ::step].astype(np.float32)  # the trainer's float32 mask
            soft = np.zeros((self.num_classes, crop, crop), np.float32)
            soft[(slice(None), *dst)] = scores.transpose(2, 0, 1)
            target[dst] = soft_target(scores)
        else:
            if size != label.shape:
                label = np.asarray(Image.fromarray(label).resize(size[::-1],
                                                                 Image.Resampling.NEAREST))
            target[dst] = label[src][:, ::step]
            padding = np.ones((crop, crop), bool)
            padding[dst] = False
            soft = one_hot_soft(target, padding, self.num_classes)
        return {"img": torch.from_numpy(image), "target": torch.from_numpy(target),
                "soft": torch.from_numpy(soft)}


# ---------------------------------------------------------------------------------- preflight


def _image_size(voc12_root: PathLike, name: str) -> tuple[int, int] | None:
    """(width, height) from the image header; None when it cannot be opened (the image checks
    of ``data.preflight`` report that)."""
    try:
        with Image.open(image_path(voc12_root, name)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure is the image check's to report
        return None


def _values(num_classes: int) -> str:
    """The PNG values a label may hold: '0..20 and 255' (VOC), '0..80 and 255' (COCO)."""
    return f"0..{num_classes - 1} and {IGNORE_INDEX}"


def _label_header(path: Path, mask_format: str, num_classes: int,
                  ) -> tuple[tuple[int, ...], str | None]:
    """Soft: (the npy's shape, its dtype name) from the header alone (a memory map reads no
    data). PNG: ((height, width), values outside 0..num_classes-1 and 255 as text or None);
    the pixels are decoded. Raises what numpy/PIL raise, or ValueError for a PNG of the wrong
    mode."""
    if mask_format == "soft":
        arr = np.load(path, mmap_mode="r")
        return tuple(arr.shape), str(arr.dtype)
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"mode {im.mode}, expected a palette or grey PNG")
        values = np.unique(np.asarray(im, dtype=np.uint8))
    odd = values[(values > num_classes - 1) & (values != IGNORE_INDEX)]
    return (im.height, im.width), (str(odd[:3].tolist()) if odd.size else None)


def check_seg_labels(names: Sequence[str], voc12_root: PathLike, label_dir: PathLike,
                     mask_format: str = "soft",
                     image_sizes: Mapping[str, tuple[int, int] | None] | None = None,
                     *, num_classes: int = NUM_CLASSES) -> list[str]:
    """Preflight of the pseudo labels of ``names`` (METHOD.md 14.3): one problem line per kind
    (``Problems.add_group``), each naming the files; an empty list when all are usable.

    Kinds: label not found; unreadable (PNG: also not a palette or grey image); soft: not
    H x W x C (C = ``num_classes``), not floating point; png: values other than 0..C-1 and 255;
    both: a size other than the image's. Soft labels are checked from the npy header alone (a
    memory map, no data read); PNGs are decoded, as their values are checked. ``image_sizes``:
    name -> (width, height) of the images if already known (e.g. ``DatasetCheck.sizes``);
    otherwise read from the image headers. An image that cannot be opened skips the size check
    (the image checks of ``data.preflight`` report it).
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    missing: list[str] = []
    unreadable: list[str] = []
    bad_shape: list[str] = []
    bad_dtype: list[str] = []
    bad_values: list[str] = []
    bad_size: list[str] = []
    for name in names:
        path = label_path(label_dir, name, mask_format)
        try:
            shape, info = _label_header(path, mask_format, num_classes)
        except FileNotFoundError:
            missing.append(str(path))
            continue
        except Exception as e:  # noqa: BLE001 - whatever numpy/PIL raise, the file is unusable
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            unreadable.append(f"{path} ({why})")
            continue
        if mask_format == "soft":
            if len(shape) != 3 or shape[2] != num_classes:
                bad_shape.append(f"{path} (shape {shape})")
                continue
            if np.dtype(info).kind != "f":
                bad_dtype.append(f"{path} ({info})")
        elif info is not None:
            bad_values.append(f"{path} (values {info})")
        img_wh = (image_sizes.get(name) if image_sizes is not None
                  else _image_size(voc12_root, name))
        if img_wh is not None and tuple(img_wh) != (shape[1], shape[0]):
            bad_size.append(f"{path} ({shape[1]}x{shape[0]}, its image is "
                            f"{img_wh[0]}x{img_wh[1]})")
    p = Problems()
    p.add_group(f"{mask_format} pseudo label not found", missing)
    p.add_group("cannot read pseudo label", unreadable)
    p.add_group(f"soft pseudo labels not H x W x {num_classes}", bad_shape)
    p.add_group("soft pseudo labels not floating point", bad_dtype)
    p.add_group(f"pseudo label PNGs with values other than {_values(num_classes)}", bad_values)
    p.add_group("pseudo labels whose size differs from their image", bad_size)
    return p.lines
