"""Stage 2 with COCO's class count (num_classes 81: CAM keys 0..79, label values 0..80, 255):
IR labels, the pair labels of training and the random walk on tiny inputs, against brute force
or the same computation on VOC keys, and the key checks under both counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.irn_affinity import IRNAffinityDataset
from tool.common.errors import UserError
from tool.irn.ir_labels import cam_to_ir_label, read_cam_maps
from tool.irn.path_index import PathIndex, affinity_labels, direction_path, search_directions
from tool.irn.random_walk import refine_cams, rw_to_labels

COCO, VOC = 81, 21


def smooth_maps(n: int, shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    """``n`` smooth float32 maps in [0, 1) (a random grid, bilinearly enlarged)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 1, 3, 4, generator=g)
    return list(F.interpolate(small, size=shape, mode="bilinear", align_corners=False)[:, 0]
                .numpy().astype(np.float32))


def two_colour_image(shape: tuple[int, int]) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    img[:, : shape[1] // 2] = (200, 30, 30)
    img[:, shape[1] // 2:] = (20, 20, 200)
    return img


# ---------------------------------------------------------------- IR labels


def test_ir_label_of_key_79_is_80_brute_force():
    """Without the CRF: per pixel, the first maximum of [threshold, maps] in each pass."""
    img = two_colour_image((12, 16))
    m5, m79 = smooth_maps(2, (12, 16), seed=3)
    label = cam_to_ir_label(img, {79: m79, 5: m5}, 0.6, 0.2, crf=False, num_classes=COCO)
    expect = np.zeros((12, 16), np.uint8)
    for y in range(12):
        for x in range(16):
            fg, bg = ([0, 6, 80][int(np.argmax([t, m5[y, x], m79[y, x]]))] for t in (0.6, 0.2))
            expect[y, x] = fg if fg else (255 if bg else 0)
    assert np.array_equal(label, expect)
    assert set(np.unique(label).tolist()) == {0, 6, 80, 255}


@pytest.mark.parametrize("crf", [False, True])
def test_ir_label_on_coco_keys_is_the_voc_label_renamed(crf):
    """The labels only name the keys: keys 5 and 79 give the labels of keys 5 and 19, with 20
    renamed 80, in both CAM forms (the CRF sees channel indices only)."""
    img = two_colour_image((16, 20))
    m5, mk = smooth_maps(2, (16, 20), seed=2)
    voc = cam_to_ir_label(img, {5: m5, 19: mk}, 0.5, 0.15, crf=crf)
    coco = cam_to_ir_label(img, {5: m5, 79: mk}, 0.5, 0.15, crf=crf, num_classes=COCO)
    irn = cam_to_ir_label(img, {"keys": np.array([5, 79]), "high_res": np.stack([m5, mk])},
                          0.5, 0.15, crf=crf, num_classes=COCO)
    assert (voc == 20).any()
    assert np.array_equal(coco, np.where(voc == 20, 80, voc))
    assert np.array_equal(irn, coco)


@pytest.mark.parametrize("num_classes,key,shown", [(COCO, 80, "0..79"), (VOC, 20, "0..19"),
                                                   (VOC, 79, "0..19")])
def test_key_out_of_range_is_refused_in_both_forms(num_classes, key, shown):
    m = np.zeros((4, 5), np.float32)
    for cams in ({key: m}, {"keys": np.array([key]), "high_res": m[None]}):
        with pytest.raises(UserError) as e:
            read_cam_maps(cams, (4, 5), num_classes=num_classes)
        assert str(key) in str(e.value) and shown in str(e.value) and "\n" not in str(e.value)
    # the largest key of the count is accepted
    keys, _ = read_cam_maps({num_classes - 2: m}, (4, 5), num_classes=num_classes)
    assert keys.tolist() == [num_classes - 2]


# ---------------------------------------------------------------- pair labels


@pytest.mark.parametrize("num_classes", [VOC, COCO])
def test_affinity_labels_80_is_a_class_and_81_ignored_brute_force(num_classes):
    rng = np.random.default_rng(3)
    label = rng.choice(np.array([0, 0, 7, 20, 21, 80, 80, 81, 255], np.uint8), size=(7, 10))
    pi = PathIndex(3, label.shape)
    masks = [m.numpy() for m in affinity_labels(label, pi.src_indices, pi.dst_indices,
                                                num_classes=num_classes)]
    flat = label.reshape(-1)
    for d in range(pi.n_directions):
        for s, (i, j) in enumerate(zip(pi.src_indices, pi.dst_indices[d])):
            a, b = int(flat[i]), int(flat[j])
            ok = a < num_classes and b < num_classes
            expect = (ok and a == b == 0, ok and a == b != 0, ok and a != b)
            assert tuple(bool(m[d, s]) for m in masks) == expect
    fg_80 = [(flat[pi.src_indices] == 80) & (flat[pi.dst_indices[d]] == 80) & (masks[1][d] > 0)
             for d in range(pi.n_directions)]
    assert any(f.any() for f in fg_80) == (num_classes == COCO)
    on_81 = (flat[pi.src_indices] == 81)[None] | (flat[pi.dst_indices] == 81)
    assert not sum(masks)[on_81].any()  # 81 is never a class, not even under 81


def test_dataset_passes_its_class_count(tmp_path):
    """IRNAffinityDataset(num_classes=81) counts IR label 80 as a class; under 21 it is
    ignored (as 255): no foreground-positive pair."""
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ir").mkdir()
    Image.fromarray(two_colour_image((40, 40))).save(tmp_path / "JPEGImages" / "a.jpg")
    ir = np.zeros((40, 40), np.uint8)
    ir[:, 20:] = 80
    Image.fromarray(ir).save(tmp_path / "ir" / "a.png")
    crop = 40
    pi = PathIndex(3, (10, 10))
    items = {n: IRNAffinityDataset(["a"], tmp_path, tmp_path / "ir", pi, crop_size=crop,
                                   rescale=None, hflip=False, seed=0, num_classes=n)[0]
             for n in (VOC, COCO)}
    coco = items[COCO]
    assert coco["aff_fg_pos_label"].sum() > 0 and coco["aff_neg_label"].sum() > 0
    assert items[VOC]["aff_fg_pos_label"].sum() == 0 and items[VOC]["aff_neg_label"].sum() == 0
    assert torch.equal(items[VOC]["aff_bg_pos_label"], coco["aff_bg_pos_label"])


# ---------------------------------------------------------------- random walk


class FixedEdge(torch.nn.Module):
    """IRNet's inference interface with a fixed edge map on the stride-4 grid."""

    def __init__(self, edge: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("edge", edge)

    def edge_displacement(self, x_pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.edge, x_pair.new_zeros(2, *self.edge.shape[1:])


def brute_force_walk(cam_dict: dict[int, np.ndarray], edge: np.ndarray, size: tuple[int, int],
                     num_fg: int, beta: float, exp_times: int, bg_thres: float, radius: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """METHOD.md 13.6 in float64 from its definitions: every pixel pair within the radius with
    affinity 1 - max edge on its path, T = column-normalised A^beta, 2^exp_times steps of
    num_fg seed channels, x4 bilinear, divided by the peak, background channel first."""
    h, w = edge.shape
    n = h * w
    a = np.eye(n)
    for y0 in range(h):
        for x0 in range(w):
            for dy, dx in search_directions(radius):
                y1, x1 = y0 + dy, x0 + dx
                if not (0 <= y1 < h and 0 <= x1 < w):
                    continue
                path = direction_path(dy, dx)
                aff = 1 - max(edge[y0 + py, x0 + px] for py, px in path.tolist())
                a[y0 * w + x0, y1 * w + x1] = a[y1 * w + x1, y0 * w + x0] = aff
    s = a ** beta
    t = np.linalg.matrix_power(s / s.sum(0, keepdims=True), 2 ** exp_times)
    full = np.zeros((num_fg, *size), np.float32)
    for k, m in cam_dict.items():
        full[k] = m
    grid = F.interpolate(torch.from_numpy(full)[None], size=(h, w), mode="bilinear",
                         align_corners=False)[0].double().numpy()
    rw = (grid * (1 - edge)).reshape(num_fg, n) @ t
    up = F.interpolate(torch.from_numpy(rw.reshape(num_fg, 1, h, w)), scale_factor=4,
                       mode="bilinear", align_corners=False)[:, 0, :size[0], :size[1]].numpy()
    scores = np.concatenate([np.full((1, *size), bg_thres), up / up.max()])
    return scores.argmax(0).astype(np.uint8), scores.transpose(1, 2, 0)


def test_walk_with_80_channels_and_key_79_against_brute_force():
    size, radius, beta, exp_times, bg = (20, 23), 3, 8.0, 3, 0.3
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    g = torch.Generator().manual_seed(4)
    edge = torch.rand(1, h, w, generator=g) * 0.8
    maps = smooth_maps(3, size, seed=5)
    cam_dict = {3: maps[0] * 0.5, 41: maps[1], 79: maps[2]}
    cam_dict[79][-6:, -6:] = 2.0  # class key 79 surely wins somewhere
    want, scores = brute_force_walk(cam_dict, edge[0].double().numpy(), size, COCO - 1, beta,
                                    exp_times, bg, radius)
    top2 = np.sort(scores, -1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0] > 1e-4).all()  # no near-tie: float32 agrees
    assert {0, 80} <= set(np.unique(want).tolist())
    img_pair = torch.zeros(2, 3, *size)
    for engine in ("dense", "sparse"):
        for present_only in (False, True):
            label, soft = refine_cams(FixedEdge(edge), img_pair, cam_dict, beta, exp_times, bg,
                                      radius, engine=engine, present_only=present_only,
                                      num_classes=COCO)
            assert np.array_equal(label, want), (engine, present_only)
            assert soft.shape == (*size, COCO) and soft.dtype == np.float16
            np.testing.assert_allclose(soft.astype(np.float32), scores, rtol=2e-3, atol=1e-4)
            absent = [c for c in range(1, COCO) if c - 1 not in cam_dict]
            assert not soft[..., absent].any()


def test_rw_to_labels_80_channels_without_keys():
    """MuSCLe's all-classes layout on COCO: channel j is class key j, label j + 1 up to 80."""
    rw = torch.zeros(80, 1, 2, 2)
    rw[79, 0, 0, 0] = 1.0
    rw[7, 0, 1, 1] = 0.8
    label, soft = rw_to_labels(rw, (8, 8), 0.5)
    assert label[0, 0] == 80 and label[7, 7] == 8 and soft.shape == (8, 8, 81)
    keyed, keyed_soft = rw_to_labels(rw[[7, 79]], (8, 8), 0.5, keys=[7, 79])
    assert np.array_equal(label, keyed) and np.array_equal(soft[..., [0, 8, 80]], keyed_soft)


@pytest.mark.parametrize("num_classes,key,shown", [(COCO, 80, "0..79"), (VOC, 20, "0..19"),
                                                   (VOC, 79, "0..19")])
def test_refine_cams_refuses_keys_beyond_the_count(num_classes, key, shown):
    model = FixedEdge(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match=shown):
        refine_cams(model, torch.zeros(2, 3, 10, 15), {key: np.zeros((10, 15))}, 8, 6, 0.35,
                    num_classes=num_classes)
