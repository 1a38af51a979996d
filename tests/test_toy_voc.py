"""Tests for the toy VOC generator (data/toy_voc.py): layout, splits, masks, labels, difficulty,
determinism and argument checks. Sets are small (at most 40 images) to stay fast."""
from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data import toy_voc
from data.voc import load_cls_labels, load_img_name_list, load_mask, voc_palette
from tool.errors import UserError

SEG = Path("ImageSets") / "Segmentation"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "voc"
    summary = toy_voc.generate(root, seed=3, n_train_aug=30, n_train=8, n_val=10)
    lists = {k: load_img_name_list(root / SEG / f"{k}.txt") for k in ("train_aug", "train", "val")}
    names = lists["train_aug"] + lists["val"]
    masks = {n: load_mask(root / "SegmentationClass" / f"{n}.png") for n in names}
    return root, summary, lists, masks


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_counts_and_splits(toy):
    root, summary, lists, _ = toy
    assert {k: len(v) for k, v in lists.items()} == {"train_aug": 30, "train": 8, "val": 10}
    assert summary["counts"] == {"train_aug": 30, "train": 8, "val": 10}
    assert set(lists["train"]) <= set(lists["train_aug"])
    assert not set(lists["val"]) & set(lists["train_aug"])
    names = lists["train_aug"] + lists["val"]
    assert len(set(names)) == 40 and all(re.fullmatch(r"\d{4}_\d{6}", n) for n in names)
    for n in names:
        assert (root / "JPEGImages" / f"{n}.jpg").is_file()
        assert (root / "SegmentationClass" / f"{n}.png").is_file()
    cls = load_cls_labels(root / "cls_labels.npy")
    assert set(cls) == set(names)
    assert all(v.dtype == np.float32 and v.shape == (20,) for v in cls.values())
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # temp dir renamed


def test_images_are_non_square_and_sized_like_masks(toy):
    root, _, lists, masks = toy
    shapes = set()
    for n in lists["train_aug"] + lists["val"]:
        with Image.open(root / "JPEGImages" / f"{n}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size[::-1] == masks[n].shape
        h, w = masks[n].shape
        assert 120 <= h <= 220 and 120 <= w <= 220 and h != w
        shapes.add((h, w))
    assert len(shapes) > 10


def test_masks_are_voc_palette_pngs_with_ignore_band(toy):
    root, _, lists, masks = toy
    with Image.open(root / "SegmentationClass" / f"{lists['val'][0]}.png") as im:
        assert im.mode == "P" and im.getpalette()[:768] == voc_palette()
    allowed = {0, 255} | {c[0] for c in toy_voc.CLASSES}
    near_share = []
    for m in masks.values():
        assert set(np.unique(m)) <= allowed
        assert 0 < np.mean(m == 255) < 0.1
        # two different labels never touch: the 255 band always separates them
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
        # the band is thin (2 px; wider only where slivers between objects merge): most 255
        # pixels have a labelled pixel within 1 px
        near = cv2.dilate((m != 255).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        near_share.append(near[m == 255].mean())
    assert min(near_share) > 0.75 and np.mean(near_share) > 0.95


def test_labels_match_visible_mask_pixels(toy):
    root, _, _, masks = toy
    cls = load_cls_labels(root / "cls_labels.npy")
    for n, m in masks.items():
        counts = np.bincount(m.ravel(), minlength=256)[1:21]
        np.testing.assert_array_equal(cls[n], (counts > 0).astype(np.float32))
        assert cls[n].sum() >= 1
        assert counts[counts > 0].min() >= 0.03 * m.size  # every object stays clearly visible


def test_class_variety_and_multi_label_ratio(toy):
    root, summary, _, _ = toy
    labels = np.stack(list(load_cls_labels(root / "cls_labels.npy").values()))
    assert (labels.sum(0) > 0).sum() >= 6
    ratio = np.mean(labels.sum(1) >= 2)
    assert ratio >= 0.3 and summary["multi_label_ratio"] == pytest.approx(ratio)
    assert len(summary["classes"]) == (labels.sum(0) > 0).sum()


def test_every_class_has_its_own_shape_and_texture():
    assert len(toy_voc.CLASSES) >= 6
    for i in (1, 2):  # shape names and texture names are both unique per class
        assert len({c[i] for c in toy_voc.CLASSES}) == len(toy_voc.CLASSES)
    v, u = np.mgrid[0:64, 0:64].astype(np.float32) - 32
    patterns = {c[2]: toy_voc.texture(c[2], u, v, c[3]) for c in toy_voc.CLASSES}
    for p in patterns.values():
        assert 0.15 < p.mean() < 0.85  # a real two-colour texture, not a flat fill
    for a, b in combinations(patterns.values(), 2):
        assert np.mean(a != b) > 0.2
    masks = [toy_voc.shape_mask(c[1], (80, 80), (40, 40), 60, 0.0) for c in toy_voc.CLASSES]
    for a, b in combinations(masks, 2):
        assert (a & b).sum() / (a | b).sum() < 0.85


def test_no_global_colour_threshold_segments_objects(toy):
    root, _, _, masks = toy
    fg_hist, bg_hist = np.zeros((4, 256)), np.zeros((4, 256))
    for n, m in masks.items():
        rgb = np.asarray(Image.open(root / "JPEGImages" / f"{n}.jpg").convert("RGB"))
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        chans = np.concatenate([rgb, grey[..., None]], 2)
        fg, bg = (m > 0) & (m != 255), m == 0
        for c in range(4):
            fg_hist[c] += np.bincount(chans[..., c][fg], minlength=256)
            bg_hist[c] += np.bincount(chans[..., c][bg], minlength=256)
    best = 0.0
    for c in range(4):
        for f, b in ((fg_hist[c], bg_hist[c]), (fg_hist[c][::-1], bg_hist[c][::-1])):
            tp, fp = np.cumsum(f), np.cumsum(b)  # foreground = value <= t (or >= t, reversed)
            best = max(best, float(np.max(tp / (f.sum() + fp))))
    assert best < 0.35


def test_same_seed_gives_identical_bytes(tmp_path):
    kw = {"n_train_aug": 4, "n_train": 2, "n_val": 2}
    toy_voc.generate(tmp_path / "a", seed=7, **kw)
    toy_voc.generate(tmp_path / "b", seed=7, **kw)
    toy_voc.generate(tmp_path / "c", seed=8, **kw)
    a, b, c = (_read_tree(tmp_path / k) for k in "abc")
    assert len(a) == 2 * 6 + 4 and a == b
    assert a["JPEGImages/2026_000001.jpg"] != c["JPEGImages/2026_000001.jpg"]


def test_existing_folder_is_written_in_place(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    toy_voc.generate(tmp_path, seed=0, n_train_aug=2, n_train=1, n_val=1)
    assert (tmp_path / "keep.txt").read_text() == "x"
    assert len(list((tmp_path / "JPEGImages").iterdir())) == 3


@pytest.mark.parametrize("kw, word", [
    ({"seed": -1}, "--seed"), ({"n_train_aug": -5}, "--n-train-aug"),
    ({"n_val": 0}, "--n-val"), ({"n_train": -1}, "--n-train"),
    ({"n_train_aug": 3, "n_train": 4}, "subset"),
])
def test_bad_arguments_are_user_errors(tmp_path, kw, word):
    with pytest.raises(UserError, match=word):
        toy_voc.generate(tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_cli_requires_out_and_prints_summary(tmp_path, capsys):
    with pytest.raises(SystemExit):
        toy_voc.main(["--seed", "1"])
    toy_voc.main(["--out", str(tmp_path / "o"), "--n-train-aug", "3", "--n-train", "1",
                  "--n-val", "1"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "train_aug 3, train 1, val 1" in line and " s" in line
