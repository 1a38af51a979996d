"""Training / multi-scale datasets and their image ops (METHOD.md 1.3-1.6, decisions D2 and D6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data import transforms as T
from data.datasets import MultiScaleDataset, TrainDataset, collate_train
from data.voc import IMAGENET_MEAN, IMAGENET_STD
from tool.common.errors import UserError

# toy sizes (D2): every size is an argument
TOY = dict(crop_size=128, view_size=64, resize_long=(128, 224), view_min_side=128)
# (width, height): smaller than view_min_side, portrait, landscape larger than it, square
SIZES = {"2007_000001": (100, 90), "2007_000002": (120, 200), "2007_000003": (220, 160),
         "2007_000004": (150, 150)}


def smooth_image(width: int, height: int, seed: int) -> Image.Image:
    """A random image without flat regions (so shifted crops never compare equal by chance)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def ref_normalize(img: Image.Image) -> np.ndarray:
    """Independent (x/255 - mean)/std in float64 rounded to float32, as (H, W, 3)."""
    x = np.asarray(img, np.float64) / 255.0
    return ((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    labels = {}
    for k, (name, (w, h)) in enumerate(SIZES.items()):
        smooth_image(w, h, k).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        labels[name] = np.eye(20, dtype=np.float32)[k]
    (root / "JPEGImages" / "2007_000666.jpg").write_bytes(b"not a jpeg at all")
    labels["2007_000666"] = np.zeros(20, np.float32)
    np.save(root / "cls_labels.npy", labels)
    return root


def train_set(voc, names=tuple(SIZES), **kw):
    return TrainDataset(names, voc, voc / "cls_labels.npy", **{**TOY, "seed": 7, **kw})


def test_train_sample_fields_shapes_and_dtypes(voc):
    ds = train_set(voc)
    for i, name in enumerate(SIZES):
        s = ds[i]
        assert s["name"] == name
        assert s["img"].shape == (3, 128, 128) and s["img"].dtype == torch.float32
        assert s["label"].shape == (20,) and s["label"].dtype == torch.float32
        assert s["label"].argmax().item() == i and s["label"].sum().item() == 1
        for v in ("view1", "view2"):
            assert s[v].shape == (3, 64, 64) and s[v].dtype == torch.float32
        for c in ("coord1", "coord2"):
            assert s[c].shape == (4,) and s[c].dtype == torch.int64
        assert s["coord1"][2:].tolist() == s["coord2"][2:].tolist()
        assert (s["coord1"][2:] > 0).all()


def test_collate_gives_batch_layout(voc):
    loader = DataLoader(train_set(voc), batch_size=3, collate_fn=collate_train)
    b = next(iter(loader))
    assert b["name"] == list(SIZES)[:3]
    assert b["img"].shape == (3, 3, 128, 128) and b["label"].shape == (3, 20)
    assert b["view1"].shape == b["view2"].shape == (3, 3, 64, 64)
    assert b["coord1"].shape == b["coord2"].shape == (3, 4)
    assert b["coord1"].dtype == torch.int64


def test_without_views_keeps_main_image_stream(voc):
    full, lean = train_set(voc), train_set(voc, with_views=False)
    for ds in (full, lean):
        ds.set_epoch(2)
    s_full, s_lean = full[1], lean[1]
    assert set(s_lean) == {"name", "label", "img"}
    assert torch.equal(s_full["img"], s_lean["img"])


def test_same_seed_epoch_index_is_deterministic_and_epochs_differ(voc):
    a, b = train_set(voc), train_set(voc)
    a.set_epoch(3)
    b.set_epoch(3)
    sa, sb = a[2], b[2]
    for key in ("img", "view1", "view2", "coord1", "coord2"):
        assert torch.equal(sa[key], sb[key]), key
    b.set_epoch(4)
    assert not torch.equal(sa["img"], b[2]["img"])
    assert not torch.equal(sa["view1"], b[2]["view1"])
    assert not torch.equal(sa["img"], train_set(voc, seed=8)[2]["img"])  # epoch 0 vs 3 too


def test_batches_do_not_depend_on_worker_count(voc):
    batches = []
    for workers in (0, 2):
        ds = train_set(voc)
        ds.set_epoch(5)  # before the iterator is created: workers copy the dataset then
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_train)
        batches.append(list(loader))
    for b0, b2 in zip(*batches, strict=True):
        assert b0["name"] == b2["name"]
        for key in ("img", "label", "view1", "view2", "coord1", "coord2"):
            assert torch.equal(b0[key], b2[key]), key


def test_normalize_matches_float64_formula_exactly():
    img = smooth_image(37, 23, seed=5)
    out = T.normalize(img)
    assert out.shape == (23, 37, 3) and out.dtype == np.float32
    assert np.array_equal(out, ref_normalize(img))
    x = np.asarray(img, np.float64) / 255.0
    custom = T.normalize(img, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    assert np.array_equal(custom, ((x - (0.5, 0.4, 0.3)) / (0.2, 0.3, 0.4)).astype(np.float32))


def test_random_crop_pad_geometry_and_inclusive_offsets():
    rng = np.random.default_rng(0)
    arr = rng.uniform(1, 2, (4, 9, 2)).astype(np.float32)  # H < crop < W; never 0
    crop = 6
    dst_tops, src_lefts = set(), set()
    for _ in range(200):
        out, box = T.random_crop_pad(arr, crop, rng)
        assert out.shape == (6, 6, 2) and out.dtype == np.float32
        assert (box.height, box.width, box.src_top, box.dst_left) == (4, 6, 0, 0)
        region = out[box.dst_top:box.dst_top + 4, :]
        assert np.array_equal(region, arr[:, box.src_left:box.src_left + 6])
        mask = np.ones((6, 6), bool)
        mask[box.dst_top:box.dst_top + 4, :] = False
        assert (out[mask] == 0).all()
        dst_tops.add(box.dst_top)
        src_lefts.add(box.src_left)
    assert dst_tops == {0, 1, 2} and src_lefts == {0, 1, 2, 3}  # both ends reachable
    _, box = T.random_crop_pad(arr[:, :6], crop, rng)  # side == crop: copied whole, offset 0
    assert (box.src_left, box.dst_left, box.width) == (0, 0, 6)


def test_dataset_crop_pads_with_zeros_around_the_resized_image(voc):
    # landscape 220x160 with the long side forced to 128 -> 128x93: rows padded, columns full
    ds = train_set(voc, names=["2007_000003"], resize_long=(128, 128), jitter=T.NO_JITTER,
                   with_views=False)
    src = Image.open(voc / "JPEGImages" / "2007_000003.jpg").convert("RGB")
    resized = src.resize((128, 93), Image.Resampling.BICUBIC)
    candidates = [ref_normalize(resized), ref_normalize(T.hflip(resized))]
    tops = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        img = ds[0]["img"].numpy().transpose(1, 2, 0)
        content_rows = np.flatnonzero(np.abs(img).sum(axis=(1, 2)) > 0)
        top = int(content_rows[0])
        assert content_rows.tolist() == list(range(top, top + 93))
        assert (img[:top] == 0).all() and (img[top + 93:] == 0).all()
        assert any(np.array_equal(img[top:top + 93], c) for c in candidates)
        tops.add(top)
    assert len(tops) > 1  # the destination offset is random


@pytest.mark.parametrize("w, h, long, expected", [
    (100, 150, 300, (200, 300)),  # portrait: height is the long side
    (99, 100, 200, (198, 200)),
    (150, 100, 300, (300, 200)),  # landscape
    (101, 150, 448, (302, 448)),  # round(301.65)
    (120, 120, 77, (77, 77)),     # square: scaled by its width
])
def test_long_side_rule(w, h, long, expected):
    assert T.long_side_size(w, h, long) == expected
    assert T.resize_long(Image.new("RGB", (w, h)), long).size == expected


def test_random_resize_long_draws_both_ends():
    rng = np.random.default_rng(1)
    img = Image.new("RGB", (20, 10))
    longs = {T.random_resize_long(img, rng, 12, 14).width for _ in range(60)}
    assert longs == {12, 13, 14}


def test_views_address_the_same_source_pixels():
    rng = np.random.default_rng(3)
    img = smooth_image(150, 130, seed=11)  # larger than view_min_side: no square resize
    for _ in range(200):
        v1, v2, c1, c2 = T.two_views(img, rng, 32, 64, T.NO_JITTER)
        assert v1.shape == v2.shape == (32, 32, 3) and v1.dtype == np.float32
        (t1, l1, h, w), (t2, l2, h2, w2) = c1, c2
        assert (h, w) == (h2, w2) and 0 < h <= 32 and 0 < w <= 32
        assert max(t1, t2) + h <= 32 and max(l1, l2) + w <= 32
        assert np.array_equal(v1[t1:t1 + h, l1:l1 + w], v2[t2:t2 + h, l2:l2 + w])


def test_view_corners_cover_all_positions_and_always_overlap():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(3000):
        i1, j1, i2, j2 = T.draw_view_corners(8, 9, 4, rng)
        assert abs(i1 - i2) < 4 and abs(j1 - j2) < 4  # (0, 4) pairs would not overlap
        seen.update([(i1, j1), (i2, j2)])
    assert seen == {(i, j) for i in range(5) for j in range(6)}
    assert T.overlap_coords(1, 5, 3, 2, 4) == ((2, 0, 2, 1), (0, 3, 2, 1))


def test_view_source_squares_only_small_images():
    assert T.view_source(Image.new("RGB", (300, 90)), 128).size == (128, 128)
    assert T.view_source(Image.new("RGB", (90, 300)), 128).size == (128, 128)
    big = Image.new("RGB", (220, 160))
    assert T.view_source(big, 128) is big


def test_flip_is_shared_by_main_image_and_views():
    # red ramps left to right: the sign of its horizontal slope tells whether a tensor is mirrored
    x = np.linspace(0, 255, 160)
    arr = np.zeros((160, 160, 3), np.uint8)
    arr[..., 0] = np.round(x)[None, :]
    arr[..., 1] = 100
    img = Image.fromarray(arr)
    ds = TrainDataset(["a"], "unused", {"a": np.zeros(20)}, **TOY, seed=0, jitter=T.NO_JITTER)
    flips = []
    for index in range(12):
        s = ds.transform(img, index)
        signs = {np.sign(np.diff(s[k][0].numpy(), axis=1).sum()) for k in ("img", "view1",
                                                                            "view2")}
        assert len(signs) == 1 and 0 not in signs
        flips.append(signs.pop() < 0)
    assert any(flips) and not all(flips)


def test_color_jitter_is_seeded_and_stream_stable():
    img = smooth_image(40, 30, seed=2)
    a = T.color_jitter(img, np.random.default_rng(5), T.DEFAULT_JITTER)
    b = T.color_jitter(img, np.random.default_rng(5), T.DEFAULT_JITTER)
    c = T.color_jitter(img, np.random.default_rng(6), T.DEFAULT_JITTER)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    r_on, r_off = np.random.default_rng(9), np.random.default_rng(9)
    T.color_jitter(img, r_on, T.DEFAULT_JITTER)
    off = T.color_jitter(img, r_off, T.NO_JITTER)
    assert np.array_equal(np.asarray(off), np.asarray(img))
    assert r_on.random() == r_off.random()  # same number of draws whatever the strengths


def test_jitter_from_config_and_validation():
    assert T.Jitter.of([0.1, 0.2, 0.3, 0.05]) == T.Jitter(0.1, 0.2, 0.3, 0.05)
    with pytest.raises(UserError):
        T.Jitter.of([0.1, 0.2])
    with pytest.raises(UserError):
        T.Jitter(hue=0.7)


def test_multiscale_list_order_sizes_and_flips(voc):
    ds = MultiScaleDataset(list(SIZES), voc, voc / "cls_labels.npy", scales=(1.0, 0.5, 1.5))
    src = Image.open(voc / "JPEGImages" / "2007_000003.jpg").convert("RGB")
    s = ds[2]
    assert s["name"] == "2007_000003" and s["size"] == (160, 220)
    assert s["label"].shape == (20,) and s["label"][2] == 1
    assert [tuple(t.shape) for t in s["img"]] == [(3, 160, 220)] * 2 + [(3, 80, 110)] * 2 + \
        [(3, 240, 330)] * 2
    assert all(t.dtype == torch.float32 for t in s["img"])
    for k in range(3):
        assert torch.equal(s["img"][2 * k + 1], torch.flip(s["img"][2 * k], dims=[-1]))
    expected = torch.from_numpy(ref_normalize(src).transpose(2, 0, 1))
    assert torch.equal(s["img"][0], expected)
    odd = ds[0]  # 100x90 at 0.5 and 1.5: round(W*s), round(H*s)
    assert [tuple(t.shape[1:]) for t in odd["img"][::2]] == [(90, 100), (45, 50), (135, 150)]


def test_multiscale_loader_without_batching_keeps_structure(voc):
    ds = MultiScaleDataset(list(SIZES)[:2], voc, voc / "cls_labels.npy", scales=[1.0])
    first = next(iter(DataLoader(ds, batch_size=None)))
    assert first["name"] == "2007_000001" and tuple(first["size"]) == (90, 100)
    assert len(first["img"]) == 2 and first["img"][0].shape == (3, 90, 100)


@pytest.mark.parametrize("cls", [TrainDataset, MultiScaleDataset])
def test_name_missing_from_labels_fails_at_construction(voc, cls):
    with pytest.raises(UserError, match="2008_999999"):
        cls(["2007_000001", "2008_999999"], voc, voc / "cls_labels.npy")


@pytest.mark.parametrize("cls", [TrainDataset, MultiScaleDataset])
def test_coco_labels_of_80_classes(voc, cls, tmp_path):
    """num_fg=80 (COCO): (80,) vectors come through as they are; the (20,) vectors of a VOC
    file are refused at construction, naming the file and both lengths."""
    coco = {n: np.eye(80, dtype=np.float32)[[10 * k, 79 - k]].max(0)
            for k, n in enumerate(SIZES)}
    np.save(tmp_path / "coco_labels.npy", coco)
    kw = TOY if cls is TrainDataset else {}
    s = cls(list(SIZES), voc, tmp_path / "coco_labels.npy", num_fg=80, **kw)[1]
    assert s["label"].shape == (80,) and torch.equal(s["label"], torch.from_numpy(coco[s["name"]]))
    assert s["label"][79 - 1] == 1
    with pytest.raises(UserError, match=r"cls_labels\.npy is bad: shape \(20,\), expected \(80,\)"):
        cls(list(SIZES), voc, voc / "cls_labels.npy", num_fg=80, **kw)


def test_name_list_file_is_accepted(voc, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n")
    assert train_set(voc, names=lst).names == ["2007_000002"]


@pytest.mark.parametrize("cls", [TrainDataset, MultiScaleDataset])
def test_corrupt_image_raises_user_error_naming_the_file(voc, cls):
    ds = cls(["2007_000666"], voc, voc / "cls_labels.npy")
    with pytest.raises(UserError, match="2007_000666.jpg"):
        ds[0]


def test_bad_sizes_are_rejected(voc):
    with pytest.raises(UserError):
        train_set(voc, view_size=200)  # larger than view_min_side
    with pytest.raises(UserError):
        train_set(voc, resize_long=(300, 200))
