"""MS COCO 2014 as the WSSS pipeline sees it: the 80 categories, their labels, the counts.

Labels: COCO's 80 category ids (1..90 with gaps) in sorted id order become labels 1..80;
0 is background and 255 "ignore" (crowd regions), as in the VOC masks. ``cls_labels.npy``
vectors are float32 (80,) over the same order (label ``k`` is vector index ``k - 1``).

Palette: :func:`data.voc.voc_palette` as it is. Its bit-interleaving colour map gives all 256
indices distinct colours, so labels 0..80 and 255 (VOC's ignore colour, 224 224 192) are told
apart in the PNGs with no COCO-specific palette.

Counts (``STANDARD_COUNTS``). The 2014 instances files hold 82,783 (train2014) and 40,504
(val2014) images (the COCO paper's split sizes). The WSSS lists (``train_14.txt`` /
``val_14.txt`` of the usual COCO releases for WSSS) have 82,081 and 40,137 images, i.e. 702
and 367 fewer: the images without annotations. This code keeps the images with at least one
non-crowd annotation; that this rule gives exactly 82,081 and 40,137 on the official files
(i.e. that no 2014 image is annotated with crowd regions only) has NOT been checked here (the
files were not available): ``data.prepare_coco`` warns when its counts differ.
"""
from __future__ import annotations

from data.voc import IGNORE_INDEX, voc_palette

__all__ = ["CATEGORIES", "CATEGORY_IDS", "CLASS_NAMES", "CAT_NAMES", "NUM_FG", "NUM_CLASSES",
           "IGNORE_INDEX", "LABEL_OF_ID", "SUPERCATEGORY_OF", "STANDARD_COUNTS", "FILE_COUNTS",
           "coco_palette", "supercategory"]

CATEGORIES = (  # (COCO category id, name), sorted by id: the 80 "instances" categories
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
# The supercategory of a category: that of the largest first id <= its id (they are contiguous)
SUPERCATEGORY_OF = {1: "person", 2: "vehicle", 10: "outdoor", 16: "animal", 27: "accessory",
                    34: "sports", 44: "kitchen", 52: "food", 62: "furniture", 72: "electronic",
                    78: "appliance", 84: "indoor"}
CATEGORY_IDS = tuple(c for c, _ in CATEGORIES)
CLASS_NAMES = tuple(n for _, n in CATEGORIES)
CAT_NAMES = ("background",) + CLASS_NAMES  # index 0 = background, k = CATEGORIES[k - 1]
LABEL_OF_ID = {cid: k for k, cid in enumerate(CATEGORY_IDS, 1)}  # COCO id -> label 1..80
NUM_FG = len(CATEGORIES)  # 80
NUM_CLASSES = NUM_FG + 1  # 81

# Images in the official 2014 instances files, and in the WSSS lists (module docstring).
FILE_COUNTS = {"train": 82783, "val": 40504}
STANDARD_COUNTS = {"train": 82081, "val": 40137}


def supercategory(category_id: int) -> str:
    """The official supercategory of a COCO category id (``SUPERCATEGORY_OF``)."""
    return SUPERCATEGORY_OF[max(k for k in SUPERCATEGORY_OF if k <= category_id)]


def coco_palette() -> list[int]:
    """The PNG palette of COCO masks (flat 256 x [r, g, b]): VOC's, distinct for 0..80, 255."""
    return voc_palette()
