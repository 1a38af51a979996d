"""Torch datasets: the training set with its two views (METHOD.md 1.3-1.5) and the multi-scale
inference/validation set (METHOD.md 1.6).

Randomness (decision D6): sample ``index`` of epoch ``epoch`` draws only from generators seeded
with ``(seed, epoch, index, stream)``, so a sample is the same whatever the DataLoader worker
count and after a resume; call ``set_epoch`` at the start of every epoch. Stream 0 drives the
shared flip and the main image, stream 1 the views, so skipping the views (``with_views=False``)
leaves the main image unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data import transforms as T
from data.voc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_FG,
    image_path,
    load_cls_labels,
    load_image,
    load_img_name_list,
    lookup_labels,
)
from tool.common.errors import UserError

PathLike = str | os.PathLike


def sample_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, ...]:
    """(main, views) generators of one sample; independent streams of (seed, epoch, index)."""
    return tuple(np.random.default_rng([seed, epoch, index, stream]) for stream in (0, 1))


def to_chw(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy -> contiguous (C, H, W) tensor of the same dtype."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _names_and_labels(names: Sequence[str] | PathLike, cls_labels: dict | PathLike,
                      num_fg: int) -> tuple[list[str], np.ndarray]:
    """Resolve a name list (or list file) and label dict (or npy path) into the names and their
    (N, num_fg) labels; absent names and vectors of another length fail now."""
    if isinstance(names, (str, os.PathLike)):
        names = load_img_name_list(names)
    names = list(names)
    if not names:
        raise UserError("the image list is empty")
    where = "cls_labels.npy"
    if not isinstance(cls_labels, dict):
        where = str(cls_labels)
        cls_labels = load_cls_labels(cls_labels)
    return names, lookup_labels(cls_labels, names, where, num_fg=num_fg)


class EpochDataset(Dataset):
    """A training set of ``names`` whose sample ``index`` draws from (seed, epoch, index)
    generators (:func:`sample_rngs`): the same sample in every run, worker and resume."""

    names: list[str]
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` uses (call before each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch


class TrainDataset(EpochDataset):
    """Training samples: a flipped/resized/jittered/cropped main image and two overlapping views.

    ``__getitem__`` returns a dict:
      name (str); img (3, crop, crop) float32; label (num_fg,) float32; and with ``with_views``:
      view1, view2 (3, view, view) float32; coord1, coord2 (4,) int64 = (top, left, h_o, w_o)
      of the views' overlap in view-1 / view-2 local coordinates (METHOD.md 1.4).

    ``num_fg``: the foreground class count of the run (20 VOC, 80 COCO), every label vector's
    length (a vector of another length is refused at construction, naming the label file).

    DataLoader workers copy the dataset when an iterator is created, so call ``set_epoch``
    before ``iter(loader)`` each epoch and do not use ``persistent_workers=True``.
    """

    def __init__(self, names: Sequence[str] | PathLike, voc12_root: PathLike,
                 cls_labels: dict | PathLike, crop_size: int = 448, view_size: int = 224,
                 resize_long: Sequence[int] = (448, 768), view_min_side: int = 448,
                 seed: int = 0, jitter: T.Jitter | Sequence[float] = T.DEFAULT_JITTER,
                 with_views: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, *, num_fg: int = NUM_FG) -> None:
        lo, hi = (int(v) for v in resize_long)
        if not 0 < lo <= hi:
            raise UserError(f"resize_long must be [min, max] with 0 < min <= max, got {lo, hi}")
        if crop_size <= 0 or not 0 < view_size <= view_min_side:
            raise UserError(f"need crop_size > 0 and 0 < view_size <= view_min_side, got "
                            f"{crop_size}, {view_size}, {view_min_side}")
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        self.names, self.labels = _names_and_labels(names, cls_labels, num_fg)
        self.voc12_root = voc12_root
        self.crop_size, self.view_size, self.view_min_side = crop_size, view_size, view_min_side
        self.resize_long = (lo, hi)
        self.seed, self.epoch = seed, 0
        self.jitter = T.Jitter.of(jitter)
        self.with_views = with_views
        self.mean, self.std = mean, std

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        sample = self.transform(load_image(image_path(self.voc12_root, name)), index)
        return {"name": name, "label": torch.tensor(self.labels[index]), **sample}

    def transform(self, img: Image.Image, index: int) -> dict[str, torch.Tensor]:
        """The augmentation of sample ``index`` in the current epoch applied to a PIL image:
        img, and with ``with_views`` view1, view2, coord1, coord2 (see the class docstring)."""
        rng, view_rng = sample_rngs(self.seed, self.epoch, index)
        if rng.random() < 0.5:  # one flip for the main image and both views
            img = T.hflip(img)
        out = {}
        if self.with_views:
            v1, v2, c1, c2 = T.two_views(img, view_rng, self.view_size, self.view_min_side,
                                         self.jitter, self.mean, self.std)
            out = {"view1": to_chw(v1), "view2": to_chw(v2),
                   "coord1": torch.tensor(c1, dtype=torch.int64),
                   "coord2": torch.tensor(c2, dtype=torch.int64)}
        img = T.random_resize_long(img, rng, *self.resize_long)
        arr = T.normalize(T.color_jitter(img, rng, self.jitter), self.mean, self.std)
        arr, _ = T.random_crop_pad(arr, self.crop_size, rng)
        return {"img": to_chw(arr), **out}


def collate_train(batch: list[dict]) -> dict:
    """METHOD.md 1.5 layout as a dict: name -> list of N str; every tensor field stacked to (N, ...)
    (img N x 3 x S x S, label N x num_fg, views N x 3 x V x V, coords N x 4 int64)."""
    out: dict = {"name": [s["name"] for s in batch]}
    for key in batch[0]:
        if key != "name":
            out[key] = torch.stack([s[key] for s in batch])
    return out


class MultiScaleDataset(Dataset):
    """Multi-scale + flip images for validation and CAM inference (METHOD.md 1.6).

    ``__getitem__`` returns a dict: name (str); label (num_fg,) float32 (``num_fg`` as for
    :class:`TrainDataset`); size (H, W) of the original image (ints; a DataLoader turns the
    tuple into a list); img: the list
    [s1, flip(s1), s2, flip(s2), ...] of (3, round(H*s), round(W*s)) float32 tensors, the flip
    being on the width axis. Samples have no batch dimension: load with
    ``DataLoader(ds, batch_size=None)`` (no collation) and add one with ``img[None]``, or stack
    a scale with its flip (``torch.stack(img[2*k:2*k+2])``) for one forward pass.
    """

    def __init__(self, names: Sequence[str] | PathLike, voc12_root: PathLike,
                 cls_labels: dict | PathLike, scales: Sequence[float] = (1.0,),
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, *, num_fg: int = NUM_FG) -> None:
        if not scales or min(scales) <= 0:
            raise UserError(f"scales must be a non-empty list of positive numbers, got {scales}")
        self.names, self.labels = _names_and_labels(names, cls_labels, num_fg)
        self.voc12_root = voc12_root
        self.scales = [float(s) for s in scales]
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        img = load_image(image_path(self.voc12_root, name))
        return {"name": name, "label": torch.tensor(self.labels[index]),
                "size": (img.height, img.width), "img": self.scaled_images(img)}

    def scaled_images(self, img: Image.Image) -> list[torch.Tensor]:
        """[s1, flip(s1), s2, flip(s2), ...] as (3, h_s, w_s) float32 tensors."""
        out = []
        for s in self.scales:
            t = to_chw(T.normalize(T.rescale(img, s), self.mean, self.std))
            out += [t, torch.flip(t, dims=[-1])]
        return out
