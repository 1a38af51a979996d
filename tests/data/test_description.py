"""The data set descriptions behind the ``num_classes`` key (data/description.py)."""
import pytest

from data import coco, voc
from data.description import COCO14, VOC12, describe
from tool.common.errors import UserError


def test_voc_and_coco_descriptions():
    assert describe(21) is VOC12 and describe(81) is COCO14
    assert (VOC12.num_fg, VOC12.num_classes) == (20, 21)
    assert (COCO14.num_fg, COCO14.num_classes) == (80, 81)
    assert VOC12.cat_names == voc.CAT_NAMES and COCO14.cat_names == coco.CAT_NAMES
    assert COCO14.cat_names[1] == "person" and COCO14.cat_names[80] == "toothbrush"
    pal = COCO14.palette()
    assert len(pal) == 768 and pal == VOC12.palette()
    colours = {tuple(pal[3 * i:3 * i + 3]) for i in [*range(81), 255]}
    assert len(colours) == 82  # every COCO label and the ignore value has its own colour


@pytest.mark.parametrize("bad", [20, 0, "voc"])
def test_unknown_class_count_is_one_clear_error(bad):
    with pytest.raises(UserError, match="num_classes .*expected one of 21 .*81"):
        describe(bad)
