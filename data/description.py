"""The data set a run works on, as every stage sees it: class names, class count, palette.

One config key, ``num_classes`` (with background: 21 = PASCAL VOC 2012, 81 = MS COCO 2014),
picks the description (:func:`describe`); the stages take their class counts, the evaluator its
per-class names and the PNG writers their palette from it, so no stage assumes VOC's 20
foreground classes. Label values are the same on both: 0 background, ``k`` = foreground class
``k`` (``cls_labels`` index and CAM dict key ``k - 1``), 255 ignore.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from data import coco, voc
from tool.common.errors import UserError

__all__ = ["DatasetDescription", "VOC12", "COCO14", "DESCRIPTIONS", "describe"]


@dataclass(frozen=True)
class DatasetDescription:
    """What a stage needs to know of a data set beyond its files."""

    name: str  # "voc12" | "coco14"
    title: str  # for reports: "PASCAL VOC 2012"
    class_names: tuple[str, ...]  # the foreground classes, label value k = class_names[k - 1]
    palette_fn: Callable[[], list[int]]  # flat 256 x [r, g, b] PNG palette
    ignore_index: int = voc.IGNORE_INDEX

    @property
    def num_fg(self) -> int:
        """Foreground classes: a ``cls_labels`` vector's length; CAM dict keys 0..num_fg - 1."""
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        """Classes with background: network heads, confusion matrices, label values 0..num_fg."""
        return self.num_fg + 1

    @property
    def cat_names(self) -> tuple[str, ...]:
        """Names by label value: index 0 = background."""
        return ("background",) + self.class_names

    def palette(self) -> list[int]:
        return self.palette_fn()


VOC12 = DatasetDescription("voc12", "PASCAL VOC 2012", voc.CLASS_NAMES, voc.voc_palette)
COCO14 = DatasetDescription("coco14", "MS COCO 2014", coco.CLASS_NAMES, coco.coco_palette)
DESCRIPTIONS = {d.num_classes: d for d in (VOC12, COCO14)}


def describe(num_classes: int) -> DatasetDescription:
    """The description of the data set with ``num_classes`` classes (background included)."""
    try:
        return DESCRIPTIONS[int(num_classes)]
    except (KeyError, TypeError, ValueError):
        known = ", ".join(f"{n} ({d.title})" for n, d in DESCRIPTIONS.items())
        raise UserError(f"num_classes {num_classes!r}: expected one of {known}") from None
