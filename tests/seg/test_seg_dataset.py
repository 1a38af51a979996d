"""Stage-3 training dataset (METHOD.md 14.3): the skimage-like soft-label resize against a brute
force, the crop/pad geometry and fills, targets of soft and PNG labels, the one-hot fallback,
seeded randomness (D6), the joint flip, and the preflight of the pseudo labels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from data import transforms as T
from data.datasets import sample_rngs
from data.seg_dataset import (
    SegTrainDataset,
    check_seg_labels,
    crop_axis,
    crop_slices,
    draw_crop_box,
    one_hot_soft,
    resize_soft,
    scaled_size,
    soft_target,
)
from data.voc import load_image, load_mask, save_label_png
from tool.common.errors import UserError

SIZES = {"2008_000001": (20, 30), "2008_000002": (26, 14), "2008_000003": (17, 23)}  # (H, W)
NAMES = list(SIZES)
CROP = 24


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    """A tiny VOC-like root: JPEGs, soft npy labels (float16 H x W x 21) in ``soft/``, PNG
    labels (0..20 and some 255) in ``png/``, and ``cls_labels.npy``."""
    root = tmp_path_factory.mktemp("seg")
    for d in ("JPEGImages", "soft", "png"):
        (root / d).mkdir()
    rng = np.random.default_rng(0)
    labels = {}
    for name, (h, w) in SIZES.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        soft = rng.random((h, w, 21)).astype(np.float16)
        soft[:3, 10:13] = 0  # ties: an all-zero patch (argmax 0), then classes 4 = 7 (4)
        soft[3:5, 10:13, [4, 7]] = 1.0  # the rest is below 1
        np.save(root / "soft" / f"{name}.npy", soft)
        png = rng.integers(0, 21, (h, w), dtype=np.uint8)
        png[rng.random((h, w)) < 0.2] = 255
        save_label_png(png, root / "png" / f"{name}.png")
        labels[name] = (rng.random(20) < 0.3).astype(np.float32)
    np.save(root / "cls_labels.npy", labels)
    return root


def dataset(root, fmt="soft", **kw):
    return SegTrainDataset(NAMES, root, root / fmt, fmt, **{
        "cls_labels": root / "cls_labels.npy", "crop_size": CROP, "seed": 5, **kw})


def still(root, fmt="soft", **kw):
    """No jitter, no rescale, no flip: the crop/pad is the only change."""
    return dataset(root, fmt, jitter=T.NO_JITTER, scale_range=None, hflip=False, **kw)


def replay(ds, index, size):
    """The crop box and flip that sample ``index`` draws, by the documented draw order (jitter,
    scale, crop column, crop row, flip); ``size``: the scaled (H, W), or None to use the scale
    draw of ``ds.scale_range`` on the image's size."""
    rng = sample_rngs(ds.seed, ds.epoch, index)[0]
    img = load_image(ds.voc12_root / "JPEGImages" / f"{ds.names[index]}.jpg")
    T.color_jitter(img, rng, ds.jitter)
    u = rng.random()
    if size is None:
        lo, hi = ds.scale_range
        size = scaled_size(img.height, img.width, lo + u * (hi - lo))
    box = draw_crop_box(*size, ds.crop_size, rng)
    return size, box, rng.random() < 0.5


def paste(win, box, crop, fill=0, dtype=None):
    """Reference crop/pad: a (crop, crop, ...) container of ``fill`` with ``win`` (the cut
    source part) at the box's destination offset."""
    out = np.full((crop, crop, *win.shape[2:]), fill, dtype or win.dtype)
    out[box.dst_top:box.dst_top + box.height, box.dst_left:box.dst_left + box.width] = win
    return out


def window(arr, box):
    return arr[box.src_top:box.src_top + box.height, box.src_left:box.src_left + box.width]


# ---------------------------------------------------------------------------- brute-force resize


def mirror(i: int, n: int) -> int:
    """Reflect an index into [0, n) about the end pixels, one bounce at a time."""
    if n == 1:
        return 0
    while not 0 <= i < n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def blur_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian blur along ``axis`` by an explicit sum, mirrored borders, radius 4 sigma."""
    r = int(4.0 * sigma + 0.5)
    offs = np.arange(-r, r + 1)
    k = np.exp(-0.5 * offs ** 2 / sigma ** 2)
    k /= k.sum()
    a = np.moveaxis(a, axis, 0)
    out = np.zeros_like(a)
    for i in range(a.shape[0]):
        for o, kw in zip(offs, k):
            out[i] += kw * a[mirror(i + o, a.shape[0])]
    return np.moveaxis(out, 0, axis)


def brute_resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    a = a.astype(np.float64)
    fy, fx = a.shape[0] / h, a.shape[1] / w
    if fy > 1:
        a = blur_axis(a, (fy - 1) / 2, 0)
    if fx > 1:
        a = blur_axis(a, (fx - 1) / 2, 1)
    out = np.zeros((h, w, a.shape[2]))
    for y in range(h):
        for x in range(w):
            r, c = fy * (y + 0.5) - 0.5, fx * (x + 0.5) - 0.5
            r0, c0 = math.floor(r), math.floor(c)
            dr, dc = r - r0, c - c0
            for rr, wr in ((r0, 1 - dr), (r0 + 1, dr)):
                for cc, wc in ((c0, 1 - dc), (c0 + 1, dc)):
                    out[y, x] += wr * wc * a[mirror(rr, a.shape[0]), mirror(cc, a.shape[1])]
    return out


@pytest.mark.parametrize("src, dst", [((9, 12, 3), (4, 5)),    # downscale (f = 2.25, 2.4)
                                      ((5, 7, 2), (11, 16)),   # upscale
                                      ((9, 5, 2), (4, 11)),    # one axis each way
                                      ((6, 1, 2), (3, 3))])    # a one-pixel axis
def test_resize_soft_matches_brute_force(src, dst):
    a = np.random.default_rng(1).random(src)
    got = resize_soft(a, dst)
    assert got.shape == (*dst, src[2]) and got.dtype == np.float64
    np.testing.assert_allclose(got, brute_resize(a, *dst), rtol=0, atol=1e-12)


def test_resize_soft_window_is_the_cut_of_the_full_resize():
    a = np.random.default_rng(2).random((13, 17, 4)).astype(np.float16)
    for size in ((7, 9), (30, 25)):
        full = resize_soft(a, size)
        part = resize_soft(a, size, (2, 3, 4, 5))
        np.testing.assert_array_equal(part, full[2:6, 3:8])
    with pytest.raises(ValueError):
        resize_soft(a, (7, 9), (5, 0, 4, 9))


# --------------------------------------------------------------------------------- crop / pad


def test_crop_axis_covers_its_range():
    rng = np.random.default_rng(0)
    longer = {crop_axis(10, 7, rng) for _ in range(200)}
    assert longer == {(s, 0, 7) for s in range(4)}
    shorter = {crop_axis(5, 7, rng) for _ in range(200)}
    assert shorter == {(0, d, 5) for d in range(3)}
    assert crop_axis(7, 7, rng) == (0, 0, 7)


def test_crop_slices_by_hand():
    box = T.CropBox(src_top=0, src_left=1, dst_top=1, dst_left=0, height=2, width=2)
    src = np.arange(1, 7).reshape(2, 3)  # [[1 2 3], [4 5 6]]
    want = [[9, 9, 9, 9],
            [2, 3, 9, 9],
            [5, 6, 9, 9],
            [9, 9, 9, 9]]
    np.testing.assert_array_equal(paste(window(src, box), box, 4, fill=9), want)
    for flip in (False, True):
        s, d = crop_slices(box, 4, flip)
        out = np.full((4, 4), 9)
        out[d] = src[s][:, ::-1] if flip else src[s]
        np.testing.assert_array_equal(out, np.fliplr(want) if flip else want)


@pytest.mark.parametrize("pad_label", [0, 255])
def test_soft_item_geometry_and_fill(seg_root, pad_label):
    """Image 20 x 30 into a 24 crop: rows padded, columns cut; padding is the mean colour, the
    zero vector and target ``pad_label``; inside, the target is the argmax (ties -> 0)."""
    ds = still(seg_root, pad_label=pad_label)
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        _, box, _ = replay(ds, 0, SIZES[NAMES[0]])
        assert box.height == 20 and box.width == CROP and box.dst_left == 0
        assert 0 <= box.dst_top <= 4 and 0 <= box.src_left <= 6 and box.src_top == 0
        img = T.normalize(load_image(seg_root / "JPEGImages" / f"{NAMES[0]}.jpg"))
        soft = np.load(seg_root / "soft" / f"{NAMES[0]}.npy").astype(np.float64)
        np.testing.assert_array_equal(item["img"].numpy().transpose(1, 2, 0),
                                      paste(window(img, box), box, CROP, 0))
        inside = np.zeros((CROP, CROP), bool)
        inside[box.dst_top:box.dst_top + 20] = True
        got_soft = item["soft"].numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(got_soft[inside].reshape(20, CROP, 21),
                                      window(soft, box).astype(np.float32))
        assert (got_soft[~inside] == 0).all() and (item["img"].numpy()[:, ~inside] == 0).all()
        target = item["target"].numpy()
        np.testing.assert_array_equal(target[inside].reshape(20, CROP),
                                      window(soft, box).astype(np.float32).argmax(-1))
        assert (target[~inside] == pad_label).all()
        # columns 10..12 are in every crop (src_left <= 6): the tie patches
        cols = slice(10 - box.src_left, 13 - box.src_left)
        assert (target[box.dst_top:box.dst_top + 3, cols] == 0).all()
        assert (target[box.dst_top + 3:box.dst_top + 5, cols] == 4).all()


def test_soft_target_ties_go_to_the_lowest_index():
    soft = np.array([[[0.5, 0.5, 0.2], [0.1, 0.7, 0.7], [0, 0, 0], [0.2, 0.1, 0.9]]])
    np.testing.assert_array_equal(soft_target(soft), [[0, 1, 0, 2]])
    assert soft_target(soft).dtype == np.int64


@pytest.mark.parametrize("pad_label", [0, 255])
def test_png_item_keeps_255_and_pads_with_pad_label(seg_root, pad_label):
    """Image 26 x 14 into a 24 crop: rows cut, columns padded."""
    ds = still(seg_root, "png", pad_label=pad_label)
    item = ds[1]
    _, box, _ = replay(ds, 1, SIZES[NAMES[1]])
    png = load_mask(seg_root / "png" / f"{NAMES[1]}.png")
    target = item["target"].numpy()
    assert target.dtype == np.int64
    np.testing.assert_array_equal(target, paste(window(png, box), box, CROP, pad_label))
    assert (target == 255).any()
    inside = np.zeros((CROP, CROP), bool)
    inside[:, box.dst_left:box.dst_left + 14] = True
    soft = item["soft"].numpy()
    assert soft.shape == (21, CROP, CROP) and soft.dtype == np.float32
    valid = inside & (target != 255)
    assert (soft.sum(0) == valid).all()  # one 1 on valid pixels, the zero vector elsewhere
    rows, cols = np.nonzero(valid)
    assert (soft[target[rows, cols], rows, cols] == 1).all()


def test_one_hot_soft_by_hand():
    target = np.array([[0, 2, 255], [1, 0, 0]])
    padding = np.array([[False, False, False], [False, False, True]])
    soft = one_hot_soft(target, padding)
    assert soft.shape == (21, 2, 3) and soft.dtype == np.float32
    np.testing.assert_array_equal(soft[:3], [[[1, 0, 0], [0, 1, 0]],
                                             [[0, 0, 0], [1, 0, 0]],
                                             [[0, 1, 0], [0, 0, 0]]])
    assert not soft[3:].any()


def test_rescaled_soft_item_is_the_window_of_resize_soft(seg_root):
    ds = dataset(seg_root, hflip=False)
    soft = np.load(seg_root / "soft" / f"{NAMES[2]}.npy")
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        size, box, _ = replay(ds, 2, None)
        seen.add(size[0] > 17)
        want = paste(resize_soft(soft, size, (box.src_top, box.src_left, box.height,
                                              box.width)), box, CROP, 0, np.float32)
        np.testing.assert_array_equal(ds[2]["soft"].numpy().transpose(1, 2, 0), want)
    assert seen == {True, False}  # both a down- and an upscale were met


def test_rescaled_png_item_holds_only_label_values(seg_root):
    ds = dataset(seg_root, "png", pad_label=255)
    png = load_mask(seg_root / "png" / f"{NAMES[0]}.png")
    for epoch in range(3):
        ds.set_epoch(epoch)
        size, box, _ = replay(ds, 0, None)
        target = ds[0]["target"].numpy()
        assert set(np.unique(target)) <= set(np.unique(png)) | {255}
        nearest = np.asarray(Image.fromarray(png).resize(size[::-1], Image.Resampling.NEAREST))
        flipped = replay(ds, 0, None)[2]
        want = paste(window(nearest, box), box, CROP, 255)
        np.testing.assert_array_equal(target, want[:, ::-1] if flipped else want)


# ------------------------------------------------------------------------- items, randomness


@pytest.mark.parametrize("fmt", ["soft", "png"])
def test_item_layout(seg_root, fmt):
    item = dataset(seg_root, fmt)[0]
    assert set(item) == {"name", "img", "target", "soft", "label"}
    assert item["name"] == NAMES[0]
    for key, shape, dtype in (("img", (3, CROP, CROP), torch.float32),
                              ("target", (CROP, CROP), torch.int64),
                              ("soft", (21, CROP, CROP), torch.float32),
                              ("label", (20,), torch.float32)):
        assert item[key].shape == shape and item[key].dtype == dtype, key
    labels = np.load(seg_root / "cls_labels.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(item["label"].numpy(), labels[NAMES[0]])
    no_label = SegTrainDataset(NAMES, seg_root, seg_root / fmt, fmt, crop_size=CROP)[0]
    assert set(no_label) == {"name", "img", "target", "soft"}


def test_same_seed_epoch_index_same_item(seg_root):
    a, b = dataset(seg_root), dataset(seg_root)
    for ds in (a, b):
        ds.set_epoch(3)
    x, y = a[1], b[1]
    for key in ("img", "target", "soft", "label"):
        assert torch.equal(x[key], y[key]), key
    a.set_epoch(4)
    assert not torch.equal(a[1]["img"], x["img"])
    assert not torch.equal(dataset(seg_root, seed=6)[0]["img"], dataset(seg_root)[0]["img"])


@pytest.mark.parametrize("fmt", ["soft", "png"])
def test_flip_moves_image_and_labels_together(seg_root, fmt):
    """Flipping draws nothing extra, so with and without it the samples differ by the flip."""
    on, off = dataset(seg_root, fmt), dataset(seg_root, fmt, hflip=False)
    flips = set()
    for epoch in range(8):
        on.set_epoch(epoch)
        off.set_epoch(epoch)
        a, b = on[0], off[0]
        flipped = replay(on, 0, None)[2]
        flips.add(flipped)
        for key in ("img", "target", "soft"):
            want = torch.flip(b[key], dims=[-1]) if flipped else b[key]
            assert torch.equal(a[key], want), (epoch, key)
    assert flips == {True, False}


def test_bad_arguments_and_missing_labels(seg_root, tmp_path):
    with pytest.raises(UserError, match="mask_format"):
        dataset(seg_root, "jpg")
    with pytest.raises(UserError, match="pad_label"):
        dataset(seg_root, pad_label=7)
    with pytest.raises(UserError, match="scale_range"):
        dataset(seg_root, scale_range=(1.5, 0.5))
    with pytest.raises(UserError, match=f"pseudo label not found: {tmp_path}.*2 more"):
        SegTrainDataset(NAMES, seg_root, tmp_path, "soft")


def test_a_bad_label_fails_when_read(seg_root, tmp_path):
    for name, (h, w) in SIZES.items():
        np.save(tmp_path / f"{name}.npy", np.zeros((h, w, 20), np.float16))
    ds = SegTrainDataset(NAMES, seg_root, tmp_path, "soft")
    with pytest.raises(UserError, match=f"{tmp_path / NAMES[0]}.npy has shape"):
        ds[0]


# ---------------------------------------------------------------------------------- preflight


def test_check_of_a_sound_set_is_empty(seg_root):
    assert check_seg_labels(NAMES, seg_root, seg_root / "soft", "soft") == []
    assert dataset(seg_root, "png").check() == []


def test_check_soft_finds_each_kind(seg_root, tmp_path):
    a, b, c = NAMES
    np.save(tmp_path / f"{a}.npy", np.zeros((20, 30, 20), np.float16))  # 20 channels
    np.save(tmp_path / f"{b}.npy", np.zeros((25, 14, 21), np.float16))  # one row short
    lines = check_seg_labels(NAMES, seg_root, tmp_path, "soft")
    assert lines == [f"soft pseudo label not found: {tmp_path / c}.npy",
                     f"soft pseudo labels not H x W x 21: {tmp_path / a}.npy "
                     "(shape (20, 30, 20))",
                     f"pseudo labels whose size differs from their image: {tmp_path / b}.npy "
                     "(14x25, its image is 14x26)"]
    np.save(tmp_path / f"{c}.npy", np.zeros((17, 23, 21), np.uint8))
    (tmp_path / f"{a}.npy").write_bytes(b"not an npy")
    lines = check_seg_labels(NAMES, seg_root, tmp_path, "soft")
    assert lines[0].startswith(f"cannot read pseudo label: {tmp_path / a}.npy (")
    assert f"soft pseudo labels not floating point: {tmp_path / c}.npy (uint8)" in lines


def test_check_png_finds_each_kind(seg_root, tmp_path):
    a, b, c = NAMES
    bad = np.zeros((20, 30), np.uint8)
    bad[0, 0], bad[0, 1] = 21, 255
    save_label_png(bad, tmp_path / f"{a}.png")
    save_label_png(np.zeros((26, 15), np.uint8), tmp_path / f"{b}.png")
    lines = check_seg_labels(NAMES, seg_root, tmp_path, "png")
    assert lines == [f"png pseudo label not found: {tmp_path / c}.png",
                     "pseudo label PNGs with values other than 0..20 and 255: "
                     f"{tmp_path / a}.png (values [21])",
                     f"pseudo labels whose size differs from their image: {tmp_path / b}.png "
                     "(15x26, its image is 14x26)"]
    Image.new("RGB", (23, 17)).save(tmp_path / f"{c}.png")
    lines = check_seg_labels(NAMES, seg_root, tmp_path, "png", image_sizes={})
    assert f"cannot read pseudo label: {tmp_path / c}.png (mode RGB, expected a palette or " \
           "grey PNG)" in lines
    assert not any("size differs" in ln for ln in lines)  # no image sizes given: not checked


# ------------------------------------------------------------------------ COCO: 81 classes

COCO = 81  # num_classes of MS COCO 2014 (data.description.COCO14): labels 0..80, (80,) vectors


@pytest.fixture(scope="module")
def coco_labels(seg_root, tmp_path_factory):
    """Pseudo labels of the seg_root images at 81 classes: soft npy H x W x 81 (the maximum on
    channel 80 in a patch), PNGs with values 0..80 (80 included) and 255, (80,) cls_labels."""
    out = tmp_path_factory.mktemp("coco_labels")
    for d in ("soft", "png"):
        (out / d).mkdir()
    rng = np.random.default_rng(1)
    labels = {}
    for name, (h, w) in SIZES.items():
        soft = rng.random((h, w, COCO)).astype(np.float16)
        soft[:4, :4, 80] = 2.0  # beyond the random [0, 1): argmax 80
        np.save(out / "soft" / f"{name}.npy", soft)
        png = rng.integers(0, COCO, (h, w), dtype=np.uint8)
        png[:3, :3], png[rng.random((h, w)) < 0.2] = 80, 255
        save_label_png(png, out / "png" / f"{name}.png")
        labels[name] = (rng.random(COCO - 1) < 0.1).astype(np.float32)
    np.save(out / "cls_labels.npy", labels)
    return out


def coco_still(seg_root, coco_labels, fmt, **kw):
    return SegTrainDataset(NAMES, seg_root, coco_labels / fmt, fmt,
                           cls_labels=coco_labels / "cls_labels.npy", crop_size=CROP, seed=5,
                           jitter=T.NO_JITTER, scale_range=None, hflip=False, num_classes=COCO,
                           **kw)


def test_coco_soft_item_keeps_all_81_channels(seg_root, coco_labels):
    ds = coco_still(seg_root, coco_labels, "soft")
    assert ds.check() == []
    labels = np.load(coco_labels / "cls_labels.npy", allow_pickle=True).item()
    for i, name in enumerate(NAMES):
        item = ds[i]
        _, box, _ = replay(ds, i, SIZES[name])
        soft = np.load(coco_labels / "soft" / f"{name}.npy").astype(np.float32)
        want = paste(window(soft, box), box, CROP, 0)  # (S, S, 81), zero vector in the padding
        assert item["soft"].shape == (COCO, CROP, CROP)
        np.testing.assert_array_equal(item["soft"].numpy().transpose(1, 2, 0), want)
        np.testing.assert_array_equal(item["target"].numpy(), want.argmax(-1))
        assert item["label"].shape == (COCO - 1,)
        np.testing.assert_array_equal(item["label"].numpy(), labels[name])
    assert (ds[1]["target"].numpy() == 80).any()  # the top-left patch: in every crop of 1


def test_coco_png_item_one_hot_over_81_channels(seg_root, coco_labels):
    ds = coco_still(seg_root, coco_labels, "png", pad_label=255)
    assert ds.check() == []
    for i, name in enumerate(NAMES):
        item = ds[i]
        _, box, _ = replay(ds, i, SIZES[name])
        png = load_mask(coco_labels / "png" / f"{name}.png")
        target = item["target"].numpy()
        np.testing.assert_array_equal(target, paste(window(png, box), box, CROP, 255))
        want = np.zeros((COCO, CROP, CROP), np.float32)  # brute-force one-hot, 0 at 255
        for y, x in np.ndindex(CROP, CROP):
            if target[y, x] != 255:
                want[target[y, x], y, x] = 1
        np.testing.assert_array_equal(item["soft"].numpy(), want)
    assert (ds[1]["target"].numpy() == 80).any() and ds[1]["soft"][80].any()  # likewise


def test_coco_refuses_81_and_21_channel_labels(seg_root, coco_labels, tmp_path):
    a, b, c = NAMES
    for d in ("soft", "png"):
        (tmp_path / d).mkdir()
        for n in NAMES:
            (tmp_path / d / f"{n}.{'npy' if d == 'soft' else 'png'}").symlink_to(
                coco_labels / d / f"{n}.{'npy' if d == 'soft' else 'png'}")
    (tmp_path / "png" / f"{a}.png").unlink()
    bad = np.zeros(SIZES[a], np.uint8)
    bad[0, 0], bad[0, 1], bad[0, 2] = 80, 81, 255  # 80 is a class, 81 is not
    save_label_png(bad, tmp_path / "png" / f"{a}.png")
    (tmp_path / "soft" / f"{b}.npy").unlink()
    np.save(tmp_path / "soft" / f"{b}.npy", np.zeros((*SIZES[b], 21), np.float16))  # VOC's
    png = SegTrainDataset(NAMES, seg_root, tmp_path / "png", "png", num_classes=COCO)
    with pytest.raises(UserError, match=r"values other than 0\.\.80 and 255") as e:
        png.load(0)
    assert f"{tmp_path / 'png' / a}.png" in str(e.value) and "\n" not in str(e.value)
    soft = SegTrainDataset(NAMES, seg_root, tmp_path / "soft", "soft", num_classes=COCO)
    with pytest.raises(UserError, match=r"shape \(26, 14, 21\), expected \(26, 14, 81\)"):
        soft.load(1)
    assert png.check() == ["pseudo label PNGs with values other than 0..80 and 255: "
                           f"{tmp_path / 'png' / a}.png (values [81])"]
    assert soft.check() == ["soft pseudo labels not H x W x 81: "
                            f"{tmp_path / 'soft' / b}.npy (shape (26, 14, 21))"]
    # the same files under VOC's 21: the 81-channel npy and the values 21..80 are refused
    assert check_seg_labels(NAMES, seg_root, coco_labels / "soft", "soft")[0].startswith(
        "soft pseudo labels not H x W x 21 (3): ")
    with pytest.raises(UserError, match=r"values other than 0\.\.20 and 255"):
        SegTrainDataset(NAMES, seg_root, coco_labels / "png", "png").load(0)
    # (20,) VOC vectors under 81 classes, and a class count of no data set
    with pytest.raises(UserError, match=r"expected \(80,\)"):
        SegTrainDataset(NAMES, seg_root, coco_labels / "png", "png",
                        cls_labels=seg_root / "cls_labels.npy", num_classes=COCO)
    with pytest.raises(UserError, match="num_classes 30"):
        SegTrainDataset(NAMES, seg_root, coco_labels / "png", "png", num_classes=30)


def test_one_hot_soft_81_by_hand():
    target = np.array([[80, 0, 255], [79, 80, 1]])
    padding = np.array([[False, False, False], [False, True, False]])
    soft = one_hot_soft(target, padding, COCO)
    assert soft.shape == (COCO, 2, 3) and soft.dtype == np.float32
    want = np.zeros((COCO, 2, 3), np.float32)
    want[80, 0, 0] = want[0, 0, 1] = want[79, 1, 0] = want[1, 1, 2] = 1
    np.testing.assert_array_equal(soft, want)
