"""Tests for the toy VOC generator (data/toy_voc.py): layout, splits, masks, labels, class plan,
class definitions, difficulty, determinism and argument checks. Rendered sets are small (at most
50 images) to stay fast; the guarantees for the default sizes are checked on the class plan,
which decides every image's classes before drawing."""
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
from tool.common.errors import UserError

SEG = Path("ImageSets") / "Segmentation"
SIZES = {"n_train_aug": 30, "n_train": 10, "n_val": 10}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "voc"
    summary = toy_voc.generate(root, seed=3, **SIZES)
    lists = {k: load_img_name_list(root / SEG / f"{k}.txt") for k in ("train_aug", "train", "val")}
    names = lists["train_aug"] + lists["val"]
    masks = {n: load_mask(root / "SegmentationClass" / f"{n}.png") for n in names}
    return root, summary, lists, masks


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _multi_hot(classes) -> np.ndarray:
    v = np.zeros(20, np.float32)
    v[np.asarray(classes) - 1] = 1
    return v


def test_layout_counts_and_splits(toy):
    root, summary, lists, _ = toy
    assert {k: len(v) for k, v in lists.items()} == {"train_aug": 30, "train": 10, "val": 10}
    assert summary["counts"] == {"train_aug": 30, "train": 10, "val": 10}
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
    near_share = []
    for m in masks.values():
        assert set(np.unique(m)) <= set(range(21)) | {255}
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


def test_labels_match_visible_mask_pixels_and_the_plan(toy):
    root, _, lists, masks = toy
    cls = load_cls_labels(root / "cls_labels.npy")
    _, plan = toy_voc.plan_classes(3, **SIZES)
    for n, classes in zip(lists["train_aug"] + lists["val"], plan):
        counts = np.bincount(masks[n].ravel(), minlength=256)[1:21]
        np.testing.assert_array_equal(cls[n], (counts > 0).astype(np.float32))
        np.testing.assert_array_equal(cls[n], _multi_hot(classes))  # every object was placed
        assert counts[counts > 0].min() >= toy_voc.MIN_VISIBLE * masks[n].size


def test_every_class_in_every_split_balanced(toy):
    root, summary, lists, _ = toy
    cls = load_cls_labels(root / "cls_labels.npy")
    for split, names in lists.items():
        per_class = np.stack([cls[n] for n in names]).sum(0)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1, split
        assert summary["split_class_min"][split] == per_class.min()
    labels = np.stack(list(cls.values()))
    assert labels.sum(1).mean() >= 2.0
    ratio = np.mean(labels.sum(1) >= 2)
    assert ratio >= 0.3 and summary["multi_label_ratio"] == pytest.approx(ratio)
    assert len(summary["classes"]) == 20


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_plan_guarantees_class_counts(seed):
    train, plan = toy_voc.plan_classes(seed, 300, 60, 60)
    assert len(plan) == 360 and len(set(train)) == 60 and train == sorted(train)
    assert 0 <= train[0] and train[-1] < 300
    assert all(1 <= len(c) == len(set(c)) <= 3 for c in plan)  # distinct classes per image
    splits = {"train_aug": (plan[:300], 25), "train": ([plan[i] for i in train], 6),
              "val": (plan[300:], 6)}
    for name, (images, least) in splits.items():
        per_class = np.stack([_multi_hot(c) for c in images]).sum(0)
        assert per_class.min() >= least, name
        assert per_class.max() - per_class.min() <= 1, name
    sizes = np.array([len(c) for c in plan])
    assert sizes.mean() >= 2.0 and np.mean(sizes >= 2) >= 0.3


def _spectrum(tex: str, period: float, angle: float) -> np.ndarray:
    """Phase-free, slightly blurred power spectrum of a 96-px patch, unit norm."""
    v, u = np.mgrid[0:96, 0:96].astype(np.float32) - 48
    c, s = np.cos(angle), np.sin(angle)
    x = toy_voc.texture(tex, c * u + s * v + 3.3, -s * u + c * v + 1.7, period).astype(float)
    x = (x - x.mean()) * np.outer(np.hanning(96), np.hanning(96))
    f = cv2.GaussianBlur(np.abs(np.fft.fft2(x)), (5, 5), 1.0)
    return (f / np.linalg.norm(f)).ravel()


def test_every_class_has_its_own_texture():
    assert [c[0] for c in toy_voc.CLASSES] == list(range(1, 21))
    assert len({(c[2], c[3]) for c in toy_voc.CLASSES}) == 20
    periods: dict[str, list[float]] = {}
    for _, _, tex, period in toy_voc.CLASSES:
        periods.setdefault(tex, []).append(period)
        assert 8 <= period <= 16
    for p in periods.values():  # fine and coarse variants stay apart after a 0.6-1.0 rescale
        assert len(p) == 1 or max(p) / min(p) >= 1.6
    v, u = np.mgrid[0:64, 0:64].astype(np.float32) - 32
    for _, _, tex, period in toy_voc.CLASSES:
        assert 0.15 < toy_voc.texture(tex, u, v, period).mean() < 0.85  # two colours, not flat
    # no two textures share their frequencies, even rotated apart by the largest object angle
    rot = toy_voc.MAX_ROTATION
    spectra = [[_spectrum(c[2], c[3], a) for a in (-rot, rot)] for c in toy_voc.CLASSES]
    for a, b in combinations(spectra, 2):
        assert a[0] @ b[1] < 0.8 and a[1] @ b[0] < 0.8
    with pytest.raises(ValueError, match="unknown texture"):
        toy_voc.texture("plaid", u, v, 8.0)


def test_every_class_has_its_own_shape():
    shapes = [c[1] for c in toy_voc.CLASSES]
    assert len(set(shapes)) == 20 and set(shapes) == set(toy_voc.SHAPES)
    masks = [toy_voc.shape_mask(s, (80, 80), (40, 40), 60, 0.0) for s in shapes]
    for m in masks:  # inside the unit box, and not too sparse to stay visible
        assert not m[:10].any() and not m[71:].any() and not m[:, :10].any()
        assert not m[:, 71:].any() and m.sum() > 0.38 * 60 * 60
    for a, b in combinations(masks, 2):
        assert (a & b).sum() / (a | b).sum() < 0.85


@pytest.mark.parametrize("hw", [(120, 121), (120, 180), (120, 220), (220, 120), (170, 150)])
def test_grid_fallback_keeps_every_object_visible(hw):
    min_px = toy_voc.MIN_VISIBLE * hw[0] * hw[1]
    for shape in toy_voc.SHAPES:
        inst, placed = toy_voc._grid_layout(hw, [shape] * 3)
        assert len(placed) == 3 and toy_voc._all_visible(inst, 3, min_px), shape


def _periodicity(img: np.ndarray, mask: np.ndarray) -> float:
    """Largest autocorrelation, over shifts of 3-20 px along x, y and both diagonals, of the
    high-passed grey level inside ``mask``: near 1 for a periodic texture, near 0 for noise;
    0 for fills without real detail (plain, smooth gradients)."""
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    m = mask.astype(np.float32)  # blur inside the mask only, so its border leaks nothing
    hp = grey - cv2.GaussianBlur(grey * m, (0, 0), 4) / np.maximum(cv2.GaussianBlur(m, (0, 0), 4),
                                                                    1e-6)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    hp, inner = np.pad(hp, 20), np.pad(inner, 20)  # rolls below wrap into the padding only
    if inner.sum() < 400 or hp[inner].std() < 4:
        return 0.0
    best = 0.0
    for lag in range(3, 21):
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            shift = (lag * dy, lag * dx)
            both = inner & np.roll(inner, shift, (0, 1))
            if both.sum() > 400:
                corr = np.corrcoef(hp[both], np.roll(hp, shift, (0, 1))[both])[0, 1]
                best = max(best, float(corr))
    return best


def test_distractors_carry_no_periodic_texture():
    rng = np.random.Generator(np.random.PCG64(5))
    scores = []
    for _ in range(60):
        img = np.full((160, 160, 3), 128, np.float32)
        scores.append(_periodicity(img, toy_voc.distractor(img, rng, (0.5, 0.6))))
    assert max(scores) < 0.3
    for cls, shape, tex, _ in toy_voc.CLASSES:  # the measure does see the class textures
        if tex in ("rings", "spokes"):
            continue
        img = np.full((160, 160, 3), 128, np.float32)
        mask = toy_voc.shape_mask(shape, (160, 160), (80, 80), 120, 0.1)
        toy_voc._paint_object(img, mask, cls, (80, 80), 0.1, rng)
        assert _periodicity(img, mask) > 0.5, tex


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
