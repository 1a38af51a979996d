"""The data set checks of the preflight (METHOD.md 12.7) and the list reader they rely on: each
bad input becomes one problem line, and all of them are collected, not the first alone."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from data.preflight import DatasetCheck
from data.voc import load_img_name_list, lookup_labels
from tool.common.errors import UserError
from tool.common.preflight import PreflightError, Problems

SEG = "ImageSets/Segmentation"


@pytest.fixture
def voc(toy_voc, tmp_path):
    """A private copy of the toy set, free to break."""
    root = tmp_path / "voc"
    shutil.copytree(toy_voc, root)
    return root


def _names(voc, split):
    return (voc / SEG / f"{split}.txt").read_text().split()


def _labels(voc):
    return np.load(voc / "cls_labels.npy", allow_pickle=True).item()


def _save_labels(voc, d):
    np.save(voc / "cls_labels.npy", d)


def _check(voc, split="train_aug", decode=False, num_fg=None, **kw) -> list[str]:
    problems = Problems()
    count = {} if num_fg is None else {"num_fg": num_fg}  # None: the default (VOC's 20)
    data = DatasetCheck(problems, voc, voc / "cls_labels.npy", decode=decode, **count)
    data.split(voc / SEG / f"{split}.txt", **kw)
    data.finish()
    return problems.lines


def test_a_sound_set_has_no_problem(voc):
    assert _check(voc) == []
    assert _check(voc, "train", gt_dir=voc / "SegmentationClass", require_foreground=True) == []


def test_missing_and_corrupt_images_are_found_without_decoding(voc):
    a, b, c = _names(voc, "train_aug")[:3]
    (voc / "JPEGImages" / f"{a}.jpg").unlink()
    (voc / "JPEGImages" / f"{b}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    # a valid header with its pixels cut off: only the full decode sees it
    full = (voc / "JPEGImages" / f"{c}.jpg").read_bytes()
    (voc / "JPEGImages" / f"{c}.jpg").write_bytes(full[:len(full) // 2])
    lines = _check(voc)
    assert lines[0] == f"image not found: {voc / 'JPEGImages' / a}.jpg"
    assert lines[1].startswith(f"cannot read image: {voc / 'JPEGImages' / b}.jpg (")
    assert len(lines) == 2
    decoded = _check(voc, decode=True)
    assert len(decoded) == 2
    assert decoded[1].startswith("cannot read image (2): ") and f"{c}.jpg" in decoded[1]


def test_many_missing_images_are_one_line(voc):
    shutil.rmtree(voc / "JPEGImages")
    (line,) = _check(voc)
    n = len(_names(voc, "train_aug"))
    assert line.startswith(f"image not found ({n}): ") and line.endswith(", ...")


def test_missing_and_wrong_gt_masks(voc):
    a, b, c = _names(voc, "train")[:3]
    gt = voc / "SegmentationClass"
    (gt / f"{a}.png").unlink()
    (gt / f"{b}.png").write_bytes(b"not a png")
    from PIL import Image

    w, h = Image.open(gt / f"{c}.png").size
    Image.new("P", (w + 1, h)).save(gt / f"{c}.png")
    lines = _check(voc, "train", gt_dir=gt)
    assert lines[0] == f"mask not found: {gt / a}.png"
    assert lines[1].startswith("cannot read mask (2): ") and f"{b}.png" in lines[1]
    assert f"{c}.png ({w + 1}x{h}, its image is {w}x{h})" in lines[1]
    assert _check(voc, "train") == []  # no GT protocol: masks are not looked at


@pytest.mark.parametrize("value, why", [
    (None, "absent"),
    (np.ones(19, np.float32), "shape (19,), expected (20,)"),
    (np.array(["1"] * 20), "dtype <U1, expected numbers"),
    (np.full(20, np.nan, np.float32), "holds NaN"),
    (np.full(20, 2.0, np.float32), "values [2.0] besides 0 and 1"),
])
def test_bad_label_vectors(voc, value, why):
    name = _names(voc, "train_aug")[0]
    d = _labels(voc)
    if value is None:
        del d[name]
    else:
        d[name] = value
    _save_labels(voc, d)
    (line,) = _check(voc)
    if value is None:
        assert line == (f"names of {voc / SEG / 'train_aug.txt'} without an entry in "
                        f"{voc / 'cls_labels.npy'}: {name}")
    else:
        assert line == f"bad label vectors in {voc / 'cls_labels.npy'}: {name} ({why})"
    # the datasets' own lookup refuses it in one line too (no traceback from a float cast)
    with pytest.raises(UserError, match=name):
        lookup_labels(d, [name])


def test_label_vectors_of_the_run_class_count(voc):
    """num_classes 81 (num_fg 80): the toy VOC's (20,) vectors are refused in ONE line naming
    the file and both counts, however many lists read them; (80,) vectors pass, and a stray
    (20,) vector among them is a bad vector as any other."""
    cls = voc / "cls_labels.npy"
    problems = Problems()
    data = DatasetCheck(problems, voc, cls, num_fg=80)
    data.split(voc / SEG / "train_aug.txt", require_foreground=True)
    data.split(voc / SEG / "train.txt")
    data.finish()
    assert problems.lines == [
        f"{cls} holds (20,) label vectors (PASCAL VOC 2012), not the (80,) of this run's "
        "num_classes 81 (MS COCO 2014): give the cls_labels.npy of this data set or set "
        "num_classes 21"]
    d = {k: np.concatenate([v, np.zeros(60, np.float32)]) for k, v in _labels(voc).items()}
    _save_labels(voc, d)
    assert _check(voc, num_fg=80) == []
    first = _names(voc, "train_aug")[0]
    d[first] = d[first][:20]
    _save_labels(voc, d)
    assert _check(voc, num_fg=80) == [
        f"bad label vectors in {cls}: {first} (shape (20,), expected (80,))"]
    # and back: (80,) vectors in a VOC run
    (line,) = _check(voc)
    assert line.startswith("bad label vectors in ")  # mixed lengths: no data set named
    _save_labels(voc, {k: np.zeros(80, np.float32) for k in d})
    assert _check(voc) == [
        f"{cls} holds (80,) label vectors (MS COCO 2014), not the (20,) of this run's "
        "num_classes 21 (PASCAL VOC 2012): give the cls_labels.npy of this data set or set "
        "num_classes 81"]


def test_all_zero_labels_of_the_training_list(voc):
    d = _labels(voc)
    _save_labels(voc, {k: np.zeros(20, np.float32) for k in d})
    (line,) = _check(voc, require_foreground=True)
    assert "is all zero: no image has a foreground class" in line
    assert _check(voc) == []  # a validation list may hold background-only images


def test_duplicate_list_names(voc, tmp_path):
    names = _names(voc, "train")
    lst = tmp_path / "dup.txt"
    lst.write_text("\n".join([names[0], names[1], f"/JPEGImages/{names[0]}.jpg x.png"]) + "\n")
    with pytest.raises(UserError, match=rf"^list file {lst} names {names[0]} twice "
                                        r"\(lines 1 and 3\)$"):
        load_img_name_list(lst)
    problems = Problems()
    DatasetCheck(problems, voc, voc / "cls_labels.npy").split(lst)
    assert problems.lines == [f"list file {lst} names {names[0]} twice (lines 1 and 3)"]


def test_problems_of_several_kinds_come_together(voc):
    a, b = _names(voc, "train_aug")[:2]
    (voc / "JPEGImages" / f"{a}.jpg").unlink()
    d = _labels(voc)
    d[b] = np.ones(3)
    _save_labels(voc, d)
    (voc / "SegmentationClass" / f"{_names(voc, 'train')[0]}.png").unlink()
    problems = Problems()
    data = DatasetCheck(problems, voc, voc / "cls_labels.npy")
    data.split(voc / SEG / "train_aug.txt", require_foreground=True)
    data.split(voc / SEG / "train.txt", gt_dir=voc / "SegmentationClass")
    data.split(voc / SEG / "nope.txt")
    data.finish()
    with pytest.raises(PreflightError) as e:
        problems.raise_if_any()
    text = str(e.value).splitlines()
    assert text[0] == "preflight found 4 problems:"
    assert [t.split(":")[0] for t in text[1:]] == [
        "  - bad label vectors in " + str(voc / "cls_labels.npy"),
        "  - cannot read list file " + str(voc / SEG / "nope.txt"),
        "  - image not found", "  - mask not found"]


def test_unreadable_cls_labels(voc):
    (voc / "cls_labels.npy").write_text("garbage")
    (line,) = _check(voc)
    assert line.startswith(f"{voc / 'cls_labels.npy'} is not a cls_labels.npy dict")
