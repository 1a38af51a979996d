"""IRN training dataset (METHOD.md 13.5.1): item layout, seeded randomness (D6), the alignment of
image and label through rescale, flip, crop and reduction, and missing or bad IR labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.irn_affinity import IRNAffinityDataset, affinity_labels, label_grid_size
from data.voc import IMAGENET_MEAN, IMAGENET_STD, load_img_name_list, load_mask
from tool.common.errors import UserError
from tool.irn.path_index import PathIndex

CROP = 128  # the toy crop: a 32 x 32 grid, on which radius 10 still fits
PI = PathIndex(10, (32, 32))


@pytest.fixture(scope="module")
def toy_ir(toy_voc, tmp_path_factory):
    """IR labels for the toy train_aug list: the GT masks written as grey PNGs (values 0, class,
    255), the form make_ir_labels writes."""
    out = tmp_path_factory.mktemp("ir_label")
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/train_aug.txt")
    for n in names:
        mask = load_mask(toy_voc / "SegmentationClass" / f"{n}.png")
        Image.fromarray(mask, mode="L").save(out / f"{n}.png")
    return names, out


def toy_set(toy_voc, toy_ir, **kw):
    names, ir_dir = toy_ir
    return IRNAffinityDataset(names, toy_voc, ir_dir, PI, **{"crop_size": CROP, "seed": 3, **kw})


def two_tone(path_root, name, width, height, split):
    """A red (class 15) | blue (background) image with its IR label, split at column ``split``."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :split] = (220, 20, 20)
    img[:, split:] = (20, 20, 220)
    (path_root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (path_root / "ir").mkdir(exist_ok=True)
    Image.fromarray(img).save(path_root / "JPEGImages" / f"{name}.jpg", quality=100)
    label = np.where(np.arange(width) < split, 15, 0).astype(np.uint8)[None].repeat(height, 0)
    Image.fromarray(label, mode="L").save(path_root / "ir" / f"{name}.png")


def axis_offsets(side: int, inside: np.ndarray) -> list[int]:
    """Candidate window starts along one axis, in source coordinates (negative: padding)."""
    if side <= CROP:  # copied whole: the first non-padding line tells where
        return [-int(np.flatnonzero(inside)[0])]
    return list(range(side - CROP + 1))


def locate_window(arr: np.ndarray, orig: np.ndarray, ir: np.ndarray):
    """(flipped, top, left, label) of the crop window ``arr`` in ``orig``, or None."""
    rows, cols = (arr != 0).any(axis=(1, 2)), (arr != 0).any(axis=(0, 2))
    for flipped in (False, True):
        src, lab = (orig[:, ::-1], ir[:, ::-1]) if flipped else (orig, ir)
        for dy in axis_offsets(src.shape[0], rows):
            for dx in axis_offsets(src.shape[1], cols):
                y0, x0 = max(dy, 0), max(dx, 0)
                y1, x1 = min(dy + CROP, src.shape[0]), min(dx + CROP, src.shape[1])
                patch = arr[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
                if (np.abs(patch[0, 0] - src[y0, x0]).max() < 1e-5  # cheap first test
                        and np.allclose(patch, src[y0:y1, x0:x1], atol=1e-5)):
                    return flipped, dy, dx, lab
    return None


def test_items(toy_voc, toy_ir):
    ds = toy_set(toy_voc, toy_ir)
    assert len(ds) == 12
    item = ds[0]
    assert set(item) == {"name", "img", "aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label"}
    assert item["name"] == toy_ir[0][0]
    assert item["img"].shape == (3, CROP, CROP) and item["img"].dtype == torch.float32
    masks = [item[k] for k in ("aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label")]
    for m in masks:
        assert m.shape == (PI.n_directions, len(PI.src_indices)) and m.dtype == torch.float32
    assert (sum(masks) <= 1).all() and all(m.sum() > 0 for m in masks)
    # the masks are the pair labels of the transformed, reduced label
    img, label = ds.transform(*ds.load(0), 0)
    assert label.shape == (32, 32) and label.dtype == np.uint8
    assert torch.equal(img, item["img"])
    for a, b in zip(affinity_labels(label, PI.src_indices, PI.dst_indices), masks):
        assert torch.equal(a, b)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["name"] == list(toy_ir[0][:2]) and batch["aff_neg_label"].shape[0] == 2


def test_seeded_randomness(toy_voc, toy_ir):
    ds = toy_set(toy_voc, toy_ir)
    first = [ds[i]["img"] for i in (4, 2)]
    again = [ds[i]["img"] for i in (2, 4)][::-1]  # order of access does not matter
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(toy_set(toy_voc, toy_ir)[4]["img"], first[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["img"], first[0])
    ds.set_epoch(0)
    assert torch.equal(ds[4]["img"], first[0])
    assert not torch.equal(toy_set(toy_voc, toy_ir, seed=4)[4]["img"], first[0])
    with pytest.raises(ValueError):
        ds.set_epoch(-1)


def test_alignment_without_rescale_is_exact(toy_voc, toy_ir):
    """Flip and crop only: the reduced label is the IR label at pixel (4i+2, 4j+2) of the same
    (flipped, shifted) window as the image, and 255 where the image is padding (the toy labels
    hold 255 of their own too)."""
    ds = toy_set(toy_voc, toy_ir, rescale=None)
    flips = 0
    for index in range(len(ds)):
        pil, ir = ds.load(index)
        img, label = ds.transform(pil, ir, index)
        # locate the window: the image's normalised values identify it
        orig = ((np.asarray(pil, np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD)
        arr = img.numpy().transpose(1, 2, 0)
        found = locate_window(arr, orig, ir)
        assert found, index
        flipped, dy, dx, lab = found
        flips += flipped
        expect = np.full((32, 32), 255, np.uint8)
        outside = np.ones((32, 32), bool)
        for i in range(32):
            for j in range(32):
                y, x = dy + 4 * i + 2, dx + 4 * j + 2
                if 0 <= y < lab.shape[0] and 0 <= x < lab.shape[1]:
                    expect[i, j], outside[i, j] = lab[y, x], False
        assert np.array_equal(label, expect), index
        assert np.array_equal((arr[2::4, 2::4] == 0).all(axis=2), outside), index
    assert 2 <= flips <= 10  # p = 0.5 over 12 samples


def test_alignment_with_rescale(tmp_path):
    """Rescaled image (bicubic) and label (nearest) keep the colour edge and the class edge
    together: away from the edge every cell agrees, and 255 is exactly the padding."""
    two_tone(tmp_path, "a", 90, 70, 37)
    ds = IRNAffinityDataset(["a"], tmp_path, tmp_path / "ir", PI, crop_size=CROP, seed=0)
    sizes = set()
    for index in range(40):
        img, label = ds.transform(*ds.load(0), index)
        arr = img.numpy().transpose(1, 2, 0)[2::4, 2::4]
        pad = (arr == 0).all(axis=2)
        assert np.array_equal(pad, label == 255)
        red = arr[..., 0] > arr[..., 2]
        cls = label == 15
        inside = ~pad
        # cells next to the class edge may disagree by one resampled pixel
        edge = np.zeros_like(cls)
        edge[:, 1:] |= cls[:, 1:] != cls[:, :-1]
        edge[:, :-1] |= cls[:, 1:] != cls[:, :-1]
        assert np.array_equal(red[inside & ~edge], cls[inside & ~edge])
        assert set(np.unique(label)) <= {0, 15, 255}
        sizes.add(int(inside.sum()))
    assert len(sizes) > 10  # the scale varies


def test_scale_range_and_flip_switch(tmp_path):
    """An image smaller than the crop shows its rescaled size whole: round(H s) x round(W s)
    with s in [0.5, 1.5); with hflip=False the red half stays left."""
    two_tone(tmp_path, "a", 60, 40, 30)
    ds = IRNAffinityDataset(["a"], tmp_path, tmp_path / "ir", PathIndex(10, (50, 50)),
                            crop_size=200, hflip=False, seed=5)
    scales = []
    for index in range(60):
        img, _ = ds.transform(*ds.load(0), index)
        arr = img.numpy().transpose(1, 2, 0)
        rows = np.flatnonzero((arr != 0).any(axis=(1, 2)))
        cols = np.flatnonzero((arr != 0).any(axis=(0, 2)))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        s = w / 60
        assert h == int(np.round(40 * s)) or abs(h - 40 * s) <= 1
        scales.append(s)
        left, right = arr[rows[0] + h // 2, cols[0] + 2], arr[rows[0] + h // 2, cols[-1] - 2]
        assert left[0] > left[2] and right[2] > right[0]  # red left, blue right: no flip
    assert 0.5 <= min(scales) < 0.6 and 1.4 < max(scales) < 1.5 + 1e-9


def test_label_grid_size():
    assert label_grid_size(512) == 128 and label_grid_size(128) == 32
    assert label_grid_size(130) == 32  # round(32.5) is 32, half to even


def test_wrong_path_index_size(toy_voc, toy_ir):
    with pytest.raises(ValueError, match="built for"):
        toy_set(toy_voc, toy_ir, crop_size=256)


def test_missing_ir_label(toy_voc, toy_ir, tmp_path):
    names, ir_dir = toy_ir
    with pytest.raises(UserError, match=f"IR label not found: .*{names[0]}.png") as e:
        IRNAffinityDataset(names, toy_voc, tmp_path, PI, crop_size=CROP)
    assert "11 more" in str(e.value)
    # removed after the dataset was made: the item says which file
    for n in names:
        (tmp_path / f"{n}.png").write_bytes((ir_dir / f"{n}.png").read_bytes())
    ds = IRNAffinityDataset(names, toy_voc, tmp_path, PI, crop_size=CROP)
    (tmp_path / f"{names[3]}.png").unlink()
    with pytest.raises(UserError, match=f"IR label not found: .*{names[3]}.png"):
        ds[3]


def test_ir_label_of_another_size(tmp_path):
    two_tone(tmp_path, "a", 60, 40, 30)
    Image.fromarray(np.zeros((40, 61), np.uint8), mode="L").save(tmp_path / "ir" / "a.png")
    ds = IRNAffinityDataset(["a"], tmp_path, tmp_path / "ir", PI, crop_size=CROP)
    with pytest.raises(UserError, match="a.png is 61x40 but its image is 60x40"):
        ds[0]


@pytest.mark.parametrize("kw", [{"rescale": (0.0, 1.0)}, {"rescale": (1.5, 0.5)},
                                {"seed": -1}, {"crop_size": 0}])
def test_bad_arguments(toy_voc, toy_ir, kw):
    with pytest.raises(UserError):
        toy_set(toy_voc, toy_ir, **kw)


def test_list_file(toy_voc, toy_ir):
    ds = IRNAffinityDataset(toy_voc / "ImageSets/Segmentation/train_aug.txt", toy_voc,
                            toy_ir[1], PI, crop_size=CROP)
    assert ds.names == toy_ir[0]
