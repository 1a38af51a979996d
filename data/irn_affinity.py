"""IRN training samples: an augmented crop and the pair labels of its IR label (METHOD.md 13.5.1).

For each image the JPEG and its IR label PNG (0 background, 1..num_fg class, 255 uncertain) are
rescaled together, the image normalised, both flipped and cropped with one box, and the label
reduced to the stride-4 grid, where every (source, direction) pair of the ``PathIndex`` gets a
label: background-positive, foreground-positive, negative, or none (an ignored end).

Randomness (decision D6) as ``data.datasets.TrainDataset``: sample ``index`` of epoch ``epoch``
draws only from a generator seeded with ``(seed, epoch, index)``, in a fixed order (scale, flip,
crop column, crop row), so a sample does not depend on the worker count and is the same after a
resume; call ``set_epoch`` before each epoch.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from data import transforms as T
from data.datasets import EpochDataset, PathLike, sample_rngs, to_chw
from data.irn_pairs import affinity_labels
from data.voc import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    image_path,
    load_image,
    load_img_name_list,
    load_mask,
)
from tool.common.errors import UserError

LABEL_SCALE = 0.25  # the IR label is reduced to the stride-4 grid of the network output


class PairIndex(Protocol):
    """What the dataset needs of a ``tool.irn.path_index.PathIndex`` (data/ cannot import it)."""

    default_size: tuple[int, int]
    src_indices: np.ndarray
    dst_indices: np.ndarray


def ir_label_path(ir_label_dir: PathLike, name: str) -> Path:
    return Path(ir_label_dir) / f"{name}.png"


def label_grid_size(crop_size: int) -> int:
    """Side of the reduced label: round(crop_size / 4), numpy rounding (128 at crop 512)."""
    return int(np.round(crop_size * LABEL_SCALE))


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(H s), round(W s)), numpy's half-to-even rounding, at least 1 pixel."""
    return max(1, int(np.round(height * scale))), max(1, int(np.round(width * scale)))


def _crop_axis(side: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source offset, destination offset, length): a longer side is cut at a random offset,
    a shorter (or equal) one copied whole to a random place in the container."""
    if side > crop:
        return int(rng.integers(0, side - crop, endpoint=True)), 0, crop
    return 0, int(rng.integers(0, crop - side, endpoint=True)), side


class IRNAffinityDataset(EpochDataset):
    """Crops and affinity labels for IRN training.

    Args:
        list: image names, or a list file (either VOC list form).
        voc12_root: folder holding ``JPEGImages/``.
        ir_label_dir: folder of ``<name>.png`` IR labels at the image resolution.
        path_index: the training ``PathIndex``; its ``default_size`` must be the reduced label
            grid (crop_size / 4 a side). Only its source and destination indices are kept.
        crop_size: side of the square crop (512).
        rescale: (lo, hi) range of the random scale s = lo + u (hi - lo), u ~ U[0, 1); None
            disables rescaling.
        hflip: flip image and label together with probability 0.5.
        seed: base seed of the per-sample generators.
        mean, std: normalisation (ImageNet).
        num_classes: classes with background (21 on VOC, 81 on COCO); label values from it up
            count as ignored (``affinity_labels``).

    ``__getitem__`` returns a dict: name (str); img (3, crop, crop) float32, normalised, zero
    (the mean colour) where the crop extends past the image; aff_bg_pos_label,
    aff_fg_pos_label, aff_neg_label: (n_dirs, n_src) float32 masks (``affinity_labels``).
    The default collate stacks them to (N, ...) and the names to a list.
    """

    def __init__(self, list: Sequence[str] | PathLike, voc12_root: PathLike,  # spec name
                 ir_label_dir: PathLike, path_index: PairIndex, crop_size: int = 512,
                 rescale: Sequence[float] | None = (0.5, 1.5), hflip: bool = True,
                 seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, *, num_classes: int = NUM_CLASSES
                 ) -> None:
        names = load_img_name_list(list) if isinstance(list, (str, os.PathLike)) else [*list]
        if not names:
            raise UserError("the image list is empty")
        if crop_size <= 0:
            raise UserError(f"crop_size must be > 0, got {crop_size}")
        if rescale is not None:
            lo, hi = (float(v) for v in rescale)
            if not 0 < lo <= hi:
                raise UserError(f"rescale must be [min, max] with 0 < min <= max, got {lo, hi}")
            rescale = (lo, hi)
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        grid = label_grid_size(crop_size)
        if tuple(path_index.default_size) != (grid, grid):
            raise ValueError(f"the path index is built for {path_index.default_size}, but crop "
                             f"{crop_size} reduces the labels to ({grid}, {grid})")
        missing = [p for p in (ir_label_path(ir_label_dir, n) for n in names) if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"IR label not found: {missing[0]}{more}; make the IR labels first")

        self.names = names
        self.voc12_root, self.ir_label_dir = voc12_root, ir_label_dir
        self.crop_size, self.label_size = int(crop_size), grid
        self.rescale, self.hflip = rescale, bool(hflip)
        self.seed, self.epoch = int(seed), 0
        self.mean, self.std = mean, std
        self.num_classes = int(num_classes)
        # Workers get a copy of the dataset: keep the small index arrays, not the path index.
        self.src_indices = torch.from_numpy(path_index.src_indices)
        self.dst_indices = torch.from_numpy(path_index.dst_indices)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image (PIL RGB) and its IR label (H, W) uint8 of sample ``index``."""
        name = self.names[index]
        img = load_image(image_path(self.voc12_root, name))
        path = ir_label_path(self.ir_label_dir, name)
        if not path.is_file():
            raise UserError(f"IR label not found: {path}; make the IR labels first")
        label = load_mask(path)
        if label.shape != (img.height, img.width):
            raise UserError(f"IR label {path} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"is {img.width}x{img.height}")
        return img, label

    def __getitem__(self, index: int) -> dict:
        img, label = self.transform(*self.load(index), index)
        bg_pos, fg_pos, neg = affinity_labels(label, self.src_indices, self.dst_indices,
                                              num_classes=self.num_classes)
        return {"name": self.names[index], "img": img, "aff_bg_pos_label": bg_pos,
                "aff_fg_pos_label": fg_pos, "aff_neg_label": neg}

    def transform(self, img: Image.Image, label: np.ndarray, index: int,
                  ) -> tuple[torch.Tensor, np.ndarray]:
        """Augment sample ``index`` of the current epoch (METHOD.md 13.5.1 steps 2-7).

        img: PIL RGB of size W x H; label: (H, W) uint8. Returns the image (3, crop, crop)
        float32 and the reduced label (crop/4, crop/4) uint8, 255 outside the image.
        """
        rng = sample_rngs(self.seed, self.epoch, index)[0]
        # Every draw is made whatever the switches, so turning one off leaves the others alone.
        u, flip = rng.random(), rng.random() < 0.5
        if self.rescale is not None:
            lo, hi = self.rescale
            size = _scaled_size(img.height, img.width, lo + u * (hi - lo))
            if size != (img.height, img.width):
                img = img.resize(size[::-1], Image.Resampling.BICUBIC)
                label = np.asarray(Image.fromarray(label).resize(size[::-1],
                                                                 Image.Resampling.NEAREST))
        arr = T.normalize(img, self.mean, self.std)
        if self.hflip and flip:
            arr, label = arr[:, ::-1], label[:, ::-1]

        crop = self.crop_size
        src_left, dst_left, w = _crop_axis(arr.shape[1], crop, rng)  # width first, as IRN
        src_top, dst_top, h = _crop_axis(arr.shape[0], crop, rng)
        img_out = np.zeros((crop, crop, 3), np.float32)
        label_out = np.full((crop, crop), IGNORE_INDEX, np.uint8)
        img_out[dst_top:dst_top + h, dst_left:dst_left + w] = arr[src_top:src_top + h,
                                                                  src_left:src_left + w]
        label_out[dst_top:dst_top + h, dst_left:dst_left + w] = label[src_top:src_top + h,
                                                                      src_left:src_left + w]
        # PIL nearest at scale 1/4 samples the pixel (4i + 2, 4j + 2) of each 4 x 4 cell.
        small = Image.fromarray(label_out).resize((self.label_size, self.label_size),
                                                  Image.Resampling.NEAREST)
        return to_chw(img_out), np.array(small)


class TopLeftCropImages(torch.utils.data.Dataset):
    """The images of the mean-shift estimate (METHOD.md 13.5.5): normalised, then cropped or
    zero-padded (the mean colour) to ``crop_size`` from the top-left corner; no flip, no
    rescale. Items: {'name', 'img' (3, crop, crop) float32}."""

    def __init__(self, list: Sequence[str] | PathLike, voc12_root: PathLike,  # spec name
                 crop_size: int = 512, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.names = load_img_name_list(list) if isinstance(list, (str, os.PathLike)) \
            else [*list]
        self.voc12_root, self.crop_size = voc12_root, int(crop_size)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        arr = T.normalize(load_image(image_path(self.voc12_root, name)), self.mean, self.std)
        crop = self.crop_size
        out = np.zeros((crop, crop, 3), np.float32)
        h, w = min(arr.shape[0], crop), min(arr.shape[1], crop)
        out[:h, :w] = arr[:h, :w]
        return {"name": name, "img": to_chw(out)}
