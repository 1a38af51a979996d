"""PL-Mix operations (tool/cam/plmix.py); answers known by construction. Small sizes: the whole
file runs in a few seconds on 2 cores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tool.cam import plmix
from tool.cam.camutils import cam_maxnorm
from tool.crf import CRFParams

T16 = 0.300048828125  # float16(0.30), the nearest half to 0.30 (Q21)


# ---- partner -----------------------------------------------------------------------------------

def test_partner_index_is_a_reproducible_permutation():
    a = plmix.partner_index(6, torch.Generator().manual_seed(3))
    b = plmix.partner_index(6, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(6))
    assert a.dtype == torch.int64
    assert plmix.partner_index(4, None, random_order=False).tolist() == [3, 2, 1, 0]


def test_union_labels():
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    perm = torch.tensor([2, 0, 1])
    assert plmix.union_labels(y, perm).tolist() == [[1, 0, 1], [1, 1, 0], [0, 1, 1]]


# ---- pseudo labels without CRF -----------------------------------------------------------------

def _label_bg(present_rows: list[list[int]], c: int = 21) -> torch.Tensor:
    lb = torch.zeros(len(present_rows), c)
    lb[:, 0] = 1
    for i, row in enumerate(present_rows):
        lb[i, row] = 1
    return lb


def test_pseudo_labels_only_present_classes():
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        maps = torch.randn(3, 21, 6, 7, generator=g) * 3
        rows = [torch.randperm(20, generator=g)[:k].add(1).tolist() for k in (1, 2, 3)]
        out = plmix.pseudo_labels(maps, _label_bg(rows), 0.1)
        assert out.dtype == torch.int64 and out.shape == (3, 6, 7)
        for i, row in enumerate(rows):
            assert set(out[i].unique().tolist()) <= {0, *row}
        assert (out > 0).any()  # T = 0.1 is low: some present class wins somewhere


def test_pseudo_labels_batch_of_one_and_label_bg_shapes():
    maps = torch.zeros(1, 21, 4, 5)
    maps[0, 7, 1:3, 1:4] = 1.0
    lb = _label_bg([[7]])
    out = plmix.pseudo_labels(maps, lb, 0.3)  # Q22: no squeeze bug at N = 1
    assert out.shape == (1, 4, 5)
    assert torch.equal(out[0], (maps[0, 7] > 0).long() * 7)
    assert torch.equal(plmix.pseudo_labels(maps, lb[:, :, None, None], 0.3), out)


def _maxnorm_input(values: list[float]) -> torch.Tensor:
    """A (1, 21, 1, len + 2) map whose class-5 channel, after cam_maxnorm, is ~values."""
    eps = 1e-6
    v = torch.tensor([1.0, 0.0] + [x * (1 + eps) + eps for x in values])  # max 1, min 0
    maps = torch.zeros(1, 21, 1, v.numel())
    maps[0, 5, 0] = v
    return maps


def test_float16_threshold_q21():
    # float16(0.30) is 0.30005 (quirk Q21, METHOD.md 5.5 step 4); half spacing here is 2**-12
    assert float(np.float16(0.30)) == T16
    maps = _maxnorm_input([0.3001, 0.3002, 0.29995])
    normed = cam_maxnorm(maps)[0, 5, 0, 2:]
    assert normed[0] > 0.30 and normed[2] < 0.30
    m = plmix.pseudo_label_maps(maps, _label_bg([[5]]), 0.30)
    assert m.dtype == torch.float16 and float(m[0, 0, 0, 0]) == T16
    out = plmix.pseudo_labels(maps, _label_bg([[5]]), 0.30)[0, 0]
    assert out[2] == 0  # 0.3001 > 0.30, but rounds to T16: a tie, background (lower id) wins
    assert out[3] == 5  # 0.3002 rounds to 0.30029 > T16
    assert out[4] == 0  # 0.29995 rounds to T16 as well


def test_pseudo_labels_ties_go_to_lower_index():
    maps = torch.zeros(1, 21, 2, 2)
    maps[0, 4] = maps[0, 9] = torch.tensor([[1.0, 0.8], [0.0, 0.5]])
    out = plmix.pseudo_labels(maps, _label_bg([[4, 9]]), 0.3)[0]
    assert out.tolist() == [[4, 4], [0, 4]]


# ---- rotation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize("angle", [90, -90])
def test_rotate_90_is_rot90_shifted_one_pixel(n, angle):
    # OpenCV rotates about (W/2, H/2) while the pixel grid's centre is ((W-1)/2, (H-1)/2): for
    # +-90 degrees every pixel centre lands exactly on one, and the result is np.rot90 moved by
    # one pixel (down for +90, right for -90), whatever the parity of n.
    lab = torch.arange(1, n * n + 1, dtype=torch.int64).reshape(1, n, n) % 200 + 1
    img = torch.stack([lab[0].float(), -lab[0].float(), lab[0].float() / 7])[None]
    lab0, img0 = lab.clone(), img.clone()
    r_img, r_lab = plmix.rotate_pair(img, lab, [angle])
    assert torch.equal(lab, lab0) and torch.equal(img, img0)
    assert r_lab.dtype == torch.int64 and r_img.dtype == torch.float32
    k = 1 if angle > 0 else -1
    expect = np.zeros((n, n), np.int64)
    ref = np.rot90(lab0[0].numpy(), k)
    if angle > 0:
        expect[1:] = ref[:-1]
    else:
        expect[:, 1:] = ref[:, :-1]
    assert np.array_equal(r_lab[0].numpy(), expect)
    for c in range(3):
        ref_c = np.rot90(img0[0, c].numpy(), k)
        exp_c = np.zeros_like(ref_c)
        if angle > 0:
            exp_c[1:] = ref_c[:-1]
        else:
            exp_c[:, 1:] = ref_c[:, :-1]
        assert np.array_equal(r_img[0, c].numpy(), exp_c)


def test_rotate_zero_is_identity_and_nearest_adds_no_ids():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 16, 20, generator=g)
    lab = torch.randint(0, 3, (2, 16, 20), generator=g) * 7
    r_img, r_lab = plmix.rotate_pair(img, lab, [0, 33])
    assert torch.equal(r_img[0], img[0]) and torch.equal(r_lab[0], lab[0])
    assert set(r_lab[1].unique().tolist()) <= {0, 7, 14}


def test_draw_angles_range():
    a = plmix.draw_angles(np.random.default_rng(0), 5000)
    assert a.min() == -90 and a.max() == 89


# ---- scale and place ---------------------------------------------------------------------------

def _seed_for(pred) -> int:
    return next(s for s in range(1000) if pred(np.random.default_rng(s).uniform(0.5, 2.0)))


def _square_pair(h: int, w: int, lab_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.zeros(1, 3, h, w)
    img[0, :, 20:40, 24:44] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    lab = torch.zeros(1, h, w, dtype=torch.int64)
    lab[0, 20:40, 24:44] = lab_id
    return img, lab


@pytest.mark.parametrize("hw", [(64, 64), (56, 72)])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_scale_place_keeps_image_and_label_aligned(hw, big, interp):
    h, w = hw
    seed = _seed_for(lambda s: (s > 1.3) if big else (0.6 < s < 0.9))
    img, lab = _square_pair(h, w)
    img0, lab0 = img.clone(), lab.clone()
    o_img, o_lab = plmix.random_scale_place(img, lab, np.random.default_rng(seed), interp)
    assert torch.equal(img, img0) and torch.equal(lab, lab0)
    assert o_img.shape == img.shape and o_lab.shape == lab.shape and o_lab.dtype == torch.int64
    inside = o_img[0, 0] == 1.0   # every bilinear tap inside the square
    outside = o_img[0, 0] == 0.0  # every tap outside
    assert inside.sum() > 20
    assert (o_lab[0][inside] == 7).all() and (o_lab[0][outside] == 0).all()
    assert torch.allclose(o_img[0, 2], 3 * o_img[0, 0], atol=1e-5)  # channels move together
    # where the square should be: centre-aligned resize by s, then the paste/crop offset
    r = np.random.default_rng(seed)
    s = r.uniform(0.5, 2.0)
    sign = 1 if not big else -1
    oy = int(r.integers(0, abs(int(h * s) - h)))
    ox = int(r.integers(0, abs(int(w * s) - w)))
    cy, cx = np.argwhere(inside.numpy()).mean(0)
    assert abs(cy - ((29.5 + 0.5) * s - 0.5 + sign * oy)) < 1.0
    assert abs(cx - ((33.5 + 0.5) * s - 0.5 + sign * ox)) < 1.0


def test_scale_place_bilinear_label_makes_spurious_ids_q10():
    seed = _seed_for(lambda s: 1.3 < s < 1.9)
    img, lab = _square_pair(64, 64, lab_id=15)
    _, o_lab = plmix.random_scale_place(img, lab, np.random.default_rng(seed), "bilinear")
    ids = set(o_lab.unique().tolist())
    assert {0, 15} <= ids and ids - {0, 15}  # intermediate ids on the boundary band
    assert max(ids - {0, 15}) < 15
    _, n_lab = plmix.random_scale_place(img, lab, np.random.default_rng(seed), "nearest")
    assert set(n_lab.unique().tolist()) == {0, 15}


def test_scale_place_unchanged_size_copies_and_draws_nothing_more():
    seed = _seed_for(lambda s: int(4 * s) == 4)
    g = torch.Generator().manual_seed(0)
    img, lab = torch.randn(1, 3, 4, 4, generator=g), torch.randint(0, 21, (1, 4, 4), generator=g)
    rng = np.random.default_rng(seed)
    o_img, o_lab = plmix.random_scale_place(img, lab, rng)
    assert torch.equal(o_img, img) and torch.equal(o_lab, lab)
    ref = np.random.default_rng(seed)
    ref.uniform(0.5, 2.0)
    assert rng.random() == ref.random()


def test_crop_offset_exclusive_upper_bound_q26():
    rng = np.random.default_rng(0)
    assert {plmix._place_axis(rng, 11, 10)[0].start for _ in range(50)} == {0}
    assert {plmix._place_axis(rng, 13, 10)[0].start for _ in range(200)} == {0, 1, 2}
    assert {plmix._place_axis(rng, 7, 10)[1].start for _ in range(200)} == {0, 1, 2}


# ---- mix ---------------------------------------------------------------------------------------

def test_mix_labels_and_images():
    g = torch.Generator().manual_seed(2)
    own = torch.randint(0, 3, (2, 5, 6), generator=g) * 4
    partner = torch.randint(0, 21, (2, 5, 6), generator=g)
    mixed = plmix.mix_labels(own, partner)
    fg = own > 0
    assert torch.equal(mixed[fg], own[fg]) and torch.equal(mixed[~fg], partner[~fg])

    a, b = torch.randn(2, 3, 5, 6, generator=g), torch.randn(2, 3, 5, 6, generator=g)
    a0, b0, own0 = a.clone(), b.clone(), own.clone()
    out = plmix.mix_images(a, b, own)
    assert torch.equal(a, a0) and torch.equal(b, b0) and torch.equal(own, own0)
    m = fg[:, None].expand_as(a)
    assert torch.equal(out[m], a[m]) and torch.equal(out[~m], b[~m])


def test_crf_pseudo_labels_present_classes_only():
    g = torch.Generator().manual_seed(4)
    n, size = 3, 40
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    maps = torch.nn.functional.avg_pool2d(torch.randn(n, 21, size, size, generator=g) * 4,
                                          9, stride=1, padding=4)
    rows = [[2], [6, 11], [1, 19, 20]]
    lb = _label_bg(rows)
    full = plmix.crf_pseudo_labels(images, maps, lb, 0.3)
    ours = plmix.crf_pseudo_labels(images.numpy(), maps, lb, 0.3,
                                   params=CRFParams(reduced=True))
    assert full.dtype == torch.int64 and full.shape == (n, size, size)
    for i, row in enumerate(rows):
        assert set(full[i].unique().tolist()) <= {0, *row}
        assert set(ours[i].unique().tolist()) <= {0, *row}
    assert (full == ours).float().mean() >= 0.995
    one = plmix.crf_pseudo_labels(images[:1], maps[:1], lb[:1], 0.3,
                                  params=CRFParams(reduced=True))
    assert torch.equal(one, ours[:1])


def test_pseudo_labels_with_81_classes():
    """COCO: 81 channels, present classes up to 80; without CRF the brute-force argmax of the
    masked float16 maps, with the CRF (released C-label and reduced) present classes only and
    the two CRFs agreeing as for VOC."""
    g = torch.Generator().manual_seed(8)
    n, size = 3, 32
    maps = torch.nn.functional.avg_pool2d(torch.randn(n, 81, size, size, generator=g) * 4,
                                          9, stride=1, padding=4)
    rows = [[80], [3, 47], [1, 40, 79]]
    lb = _label_bg(rows, 81)
    plain = plmix.pseudo_labels(maps, lb, 0.3)
    for i, row in enumerate(rows):
        m = cam_maxnorm(maps[i:i + 1])[0].half().float()
        m[0] = T16
        ref = torch.stack([m[c] if c in (0, *row) else torch.zeros_like(m[0])
                           for c in range(81)]).argmax(0)
        assert torch.equal(plain[i], ref)
    assert 80 in plain[0].unique().tolist()  # the last COCO class does win somewhere
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    full = plmix.crf_pseudo_labels(images, maps, lb, 0.3)
    ours = plmix.crf_pseudo_labels(images, maps, lb, 0.3, params=CRFParams(reduced=True))
    for i, row in enumerate(rows):
        assert set(full[i].unique().tolist()) <= {0, *row}
        assert set(ours[i].unique().tolist()) <= {0, *row}
    assert (full == ours).float().mean() >= 0.995


@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize("angle", [90, -90])
def test_rotate_90_about_pixel_centre_is_exactly_rot90(n, angle):
    rng = np.random.default_rng(n)
    lab = torch.from_numpy(rng.integers(0, 21, (1, n, n)).astype(np.int64))
    img = torch.from_numpy(rng.normal(size=(1, 3, n, n)).astype(np.float32))
    out_img, out_lab = plmix.rotate_pair(img, lab, [angle], released_centre=False)
    k = 1 if angle == 90 else -1  # positive = counter-clockwise, as np.rot90
    np.testing.assert_array_equal(out_lab[0].numpy(), np.rot90(lab[0].numpy(), k))
    for c in range(3):
        np.testing.assert_allclose(out_img[0, c].numpy(), np.rot90(img[0, c].numpy(), k),
                                   atol=1e-5)
