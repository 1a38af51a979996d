"""Data set checks of the preflight (METHOD.md 12.7): lists, image-level labels, images and GT
masks, every problem collected in a :class:`~tool.common.preflight.Problems` instead of
stopping at the first one (or in whichever epoch first draws a bad image).

Images and masks are opened for their headers only (size and mode, no pixel decoded), which
takes well under a millisecond a file; ``decode=True`` also decodes every pixel, to find files
truncated after a valid header.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from data.description import DESCRIPTIONS
from data.voc import NUM_FG, image_path, label_problem, load_cls_labels, load_img_name_list
from tool.common.errors import UserError
from tool.common.preflight import Problems

PathLike = str | os.PathLike


def _open(path: Path, decode: bool) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image file; raises what PIL raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if decode:
                im.load()
            return im.size, im.mode


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class DatasetCheck:
    """The data set of one stage: call :meth:`split` for each list it reads, then
    :meth:`finish` (which adds the image and mask problems, one line per kind).
    ``cls_labels`` None: a stage that never reads the image-level labels (IRN training).
    ``num_fg``: the run's foreground class count (``num_classes - 1``: 20 VOC, 80 COCO), the
    length every label vector must have."""

    def __init__(self, problems: Problems, voc12_root: PathLike, cls_labels: PathLike | None,
                 decode: bool = False, *, num_fg: int = NUM_FG) -> None:
        self.problems, self.root, self.cls_path = problems, Path(voc12_root), str(cls_labels)
        self.decode, self.num_fg = decode, num_fg
        self.other_set_reported = False
        self.labels: dict | None = None
        if cls_labels is not None:
            try:
                self.labels = load_cls_labels(cls_labels)
            except UserError as e:
                problems.add(str(e))
        self.sizes: dict[str, tuple[int, int] | None] = {}  # name -> image size (None: bad)
        self.missing: list[str] = []
        self.unreadable: list[str] = []
        self.masks_missing: list[str] = []
        self.masks_bad: list[str] = []
        self.n_masks = 0
        self.label_checked: set[str] = set()

    def split(self, list_path: PathLike, gt_dir: PathLike | None = None,
              require_foreground: bool = False,
              images: Callable[[list[str]], list[str]] | None = None) -> list[str] | None:
        """Check one list: readable, no name twice; every name in cls_labels with a valid
        vector; its images (and GT masks under ``gt_dir``). ``require_foreground``: at least
        one image has a class (the training list: all-zero labels leave nothing to learn).
        ``images``: which names' files to open (e.g. a torchrun process's share; default all).
        Returns the names (None when the list itself is unusable)."""
        try:
            names = load_img_name_list(list_path)
        except UserError as e:
            self.problems.add(str(e))
            return None
        self._labels(names, list_path, require_foreground)
        mine = names if images is None else images(names)
        for n in mine:
            self._image(n)
        if gt_dir is not None:
            for n in mine:
                self._mask(Path(gt_dir), n)
        return names

    def _labels(self, names: list[str], list_path: PathLike, require_foreground: bool) -> None:
        if self.labels is None:
            return
        new = [n for n in names if n not in self.label_checked]  # once per name, all lists
        self.label_checked.update(new)
        absent = [n for n in new if n not in self.labels]
        self.problems.add_group(f"names of {list_path} without an entry in {self.cls_path}",
                                absent)
        bad = [f"{n} ({why})" for n in new if n in self.labels
               and (why := label_problem(self.labels[n], self.num_fg)) is not None]
        other = self._other_data_set([n for n in new if n in self.labels]) if bad else None
        if other is not None:
            if not self.other_set_reported:  # one line for the file, not one per list
                self.problems.add(other)
                self.other_set_reported = True
        else:
            self.problems.add_group(f"bad label vectors in {self.cls_path}", bad)
        if require_foreground and all(
                n in self.labels and label_problem(self.labels[n], self.num_fg) is None
                and not np.asarray(self.labels[n]).any() for n in names):
            self.problems.add(f"every label of {list_path} in {self.cls_path} is all zero: no "
                              "image has a foreground class to learn from")

    def _other_data_set(self, names: list[str]) -> str | None:
        """One line when every vector of ``names`` has the length of another data set's
        foreground count (a VOC cls_labels.npy in a COCO run, or back); None otherwise."""
        try:
            shapes = {np.shape(self.labels[n]) for n in names}
        except ValueError:  # a ragged entry: not one data set's vectors
            return None
        if len(shapes) != 1:
            return None
        (shape,) = shapes
        if len(shape) != 1 or shape[0] == self.num_fg or shape[0] + 1 not in DESCRIPTIONS:
            return None
        k, n, here = shape[0], self.num_fg, DESCRIPTIONS.get(self.num_fg + 1)
        run = f"num_classes {n + 1}" + (f" ({here.title})" if here else "")
        return (f"{self.cls_path} holds ({k},) label vectors ({DESCRIPTIONS[k + 1].title}), "
                f"not the ({n},) of this run's {run}: give the cls_labels.npy of this data "
                f"set or set num_classes {k + 1}")

    def _image(self, name: str) -> None:
        if name in self.sizes:  # already checked for another list
            return
        path = image_path(self.root, name)
        size = None
        try:
            size = _open(path, self.decode)[0]
        except FileNotFoundError:
            self.missing.append(str(path))
        except Exception as e:  # noqa: BLE001 - whatever PIL raises, the file is unusable
            self.unreadable.append(f"{path} ({_why(e)})")
        self.sizes[name] = size

    def _mask(self, gt_dir: Path, name: str) -> None:
        self.n_masks += 1
        path = gt_dir / f"{name}.png"
        try:
            size, mode = _open(path, self.decode)
        except FileNotFoundError:
            self.masks_missing.append(str(path))
            return
        except Exception as e:  # noqa: BLE001
            self.masks_bad.append(f"{path} ({_why(e)})")
            return
        if mode not in ("P", "L"):
            self.masks_bad.append(f"{path} (mode {mode}, expected a palette or grey PNG)")
        elif self.sizes.get(name) not in (None, size):
            w, h = self.sizes[name]
            self.masks_bad.append(f"{path} ({size[0]}x{size[1]}, its image is {w}x{h})")

    def finish(self) -> None:
        """Add the image and mask problems found by every :meth:`split`."""
        p = self.problems
        p.add_group("image not found", self.missing)
        p.add_group("cannot read image", self.unreadable)
        p.add_group("mask not found", self.masks_missing)
        p.add_group("cannot read mask", self.masks_bad)
