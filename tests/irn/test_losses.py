"""IRN training losses (METHOD.md 13.5.2): the canned constants of the spec and brute-force
reductions on small grids."""
from __future__ import annotations

import math

import pytest
import torch

from tool.irn.losses import (
    affinity_loss,
    displacement_loss,
    irn_loss,
    pair_displacement,
)
from tool.irn.path_index import PathIndex

EPS = 1e-5


def masks(n, pi, seed):
    """Random disjoint (bg_pos, fg_pos, neg) masks, with some pairs in none."""
    gen = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 4, (n, pi.n_directions, len(pi.src_indices)), generator=gen)
    return [(kind == k).float() for k in range(3)]


def test_zero_logits_give_ln2_terms():
    pi = PathIndex(10, (24, 30))
    ones = torch.ones(2, pi.n_directions, len(pi.src_indices))
    out = affinity_loss(torch.zeros(2, 1, 24, 30), pi.path_indices, ones, ones, ones)
    # a = 0.5 everywhere: -ln(0.5 + 1e-5) = -ln(1 + 1e-5 - 0.5) = 0.6931272
    for key in ("bg_pos", "fg_pos", "pos", "neg"):
        assert out[key].item() == pytest.approx(0.6931272, rel=1e-6)


def test_zero_displacement_all_fg_pairs():
    pi = PathIndex(10, (24, 30))
    ones = torch.ones(3, pi.n_directions, len(pi.src_indices))
    out = displacement_loss(torch.zeros(3, 2, 24, 30), pi.search_dst, pi.radius_floor,
                            ones, ones)
    assert out["fg"].item() == pytest.approx(1278 / 304, rel=1e-6)  # 4.2039475
    assert out["fg"].item() == pytest.approx(4.2039475, rel=1e-6)
    assert out["bg"].item() == 0.0


def test_field_pointing_at_one_centroid_costs_nothing():
    pi = PathIndex(10, (24, 30))
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(30.0), indexing="ij")
    disp = torch.stack([11.5 - ys, 14.25 - xs])[None].repeat(2, 1, 1, 1)
    ones = torch.ones(2, pi.n_directions, len(pi.src_indices))
    out = displacement_loss(disp, pi.search_dst, pi.radius_floor, ones, ones)
    assert out["fg"].item() == 0.0
    assert out["bg"].item() > 0


def test_pair_displacement_brute_force():
    pi = PathIndex(3, (7, 9))
    disp = torch.randn(2, 2, 7, 9, generator=torch.Generator().manual_seed(1))
    delta = pair_displacement(disp, pi.search_dst, pi.radius_floor)
    assert delta.shape == (2, 2, pi.n_directions, len(pi.src_indices))
    flat = disp.reshape(2, 2, -1)
    for d in range(pi.n_directions):
        expect = flat[:, :, pi.src_indices] - flat[:, :, pi.dst_indices[d]]
        assert torch.equal(delta[:, :, d], expect)


def test_losses_brute_force():
    pi = PathIndex(3, (8, 10))
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 8, 10, generator=gen)
    disp = torch.randn(2, 2, 8, 10, generator=gen)
    bg, fg, neg = masks(2, pi, seed=3)
    got = irn_loss(logits, disp, pi.path_indices, pi.search_dst, pi.radius_floor, bg, fg, neg)

    prob = torch.sigmoid(logits).double().reshape(2, -1)
    dflat = disp.double().reshape(2, 2, -1)
    paths = [p for g in pi.search_paths for p in g.tolist()]
    sums = dict.fromkeys(("bg", "fg", "neg", "dfg", "dbg"), 0.0)
    for n in range(2):
        for d, path in enumerate(paths):
            dy, dx = pi.search_dst[d].tolist()
            for s, src in enumerate(pi.src_indices.tolist()):
                y, x = divmod(src, 10)
                a = 1 - max(prob[n, (y + py) * 10 + x + px].item() for py, px in path)
                delta = dflat[n, :, src] - dflat[n, :, pi.dst_indices[d, s]]
                sums["bg"] += bg[n, d, s].item() * -math.log(a + EPS)
                sums["fg"] += fg[n, d, s].item() * -math.log(a + EPS)
                sums["neg"] += neg[n, d, s].item() * -math.log(1 + EPS - a)
                sums["dfg"] += fg[n, d, s].item() * (abs(delta[0] - dy) + abs(delta[1] - dx))
                sums["dbg"] += bg[n, d, s].item() * delta.abs().sum().item()
    nb, nf, nn = bg.sum().item(), fg.sum().item(), neg.sum().item()
    expect = {"bg_pos": sums["bg"] / (nb + EPS), "fg_pos": sums["fg"] / (nf + EPS),
              "neg": sums["neg"] / (nn + EPS), "dp_fg": float(sums["dfg"]) / (2 * nf + EPS),
              "dp_bg": sums["dbg"] / (2 * nb + EPS)}
    expect["pos"] = (expect["bg_pos"] + expect["fg_pos"]) / 2
    expect["loss"] = (expect["pos"] + expect["neg"]) / 2 + (expect["dp_fg"] + expect["dp_bg"]) / 2
    assert set(got) == set(expect)
    for key, value in expect.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5), key


def test_gradients_stay_in_their_branch():
    pi = PathIndex(3, (8, 10))
    logits = torch.randn(1, 1, 8, 10, requires_grad=True)
    disp = torch.randn(1, 2, 8, 10, requires_grad=True)
    bg, fg, neg = masks(1, pi, seed=4)
    parts = irn_loss(logits, disp, pi.path_indices, pi.search_dst, pi.radius_floor, bg, fg, neg)
    (parts["pos"] + parts["neg"]).backward(retain_graph=True)
    assert disp.grad is None and logits.grad.abs().sum() > 0
    logits.grad = None
    (parts["dp_fg"] + parts["dp_bg"]).backward()
    assert logits.grad is None and disp.grad.abs().sum() > 0


def test_without_displacement():
    pi = PathIndex(3, (8, 10))
    logits = torch.randn(1, 1, 8, 10)
    disp = torch.randn(1, 2, 8, 10, requires_grad=True)
    bg, fg, neg = masks(1, pi, seed=5)
    out = irn_loss(logits, disp, pi.path_indices, pi.search_dst, pi.radius_floor, bg, fg, neg,
                   with_displacement=False)
    assert out["dp_fg"].item() == out["dp_bg"].item() == 0.0
    assert out["loss"].item() == pytest.approx(0.5 * (out["pos"] + out["neg"]).item())


def test_empty_masks_give_zero_not_nan():
    pi = PathIndex(3, (8, 10))
    zeros = torch.zeros(1, pi.n_directions, len(pi.src_indices))
    out = irn_loss(torch.randn(1, 1, 8, 10), torch.randn(1, 2, 8, 10), pi.path_indices,
                   pi.search_dst, pi.radius_floor, zeros, zeros, zeros)
    assert all(v.item() == 0.0 for v in out.values())


def test_tensor_indices_match_numpy_indices():
    pi = PathIndex(3, (8, 10))
    logits = torch.randn(2, 1, 8, 10)
    bg, fg, neg = masks(2, pi, seed=6)
    a = affinity_loss(logits, pi.path_indices, bg, fg, neg)
    b = affinity_loss(logits, [torch.from_numpy(p) for p in pi.path_indices], bg, fg, neg)
    assert all(torch.equal(a[k], b[k]) for k in a)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_device_follows_inputs(device):
    pi = PathIndex(3, (8, 10))
    gen = torch.Generator().manual_seed(7)
    logits, disp = torch.randn(2, 1, 8, 10, generator=gen), torch.randn(2, 2, 8, 10, generator=gen)
    bg, fg, neg = masks(2, pi, seed=8)
    ref = irn_loss(logits, disp, pi.path_indices, pi.search_dst, pi.radius_floor, bg, fg, neg)
    moved = [t.to(device) for t in (logits, disp, bg, fg, neg)]
    got = irn_loss(moved[0], moved[1], pi.path_indices, pi.search_dst, pi.radius_floor,
                   *moved[2:])
    for key, value in got.items():
        assert value.device.type == device
        assert value.item() == pytest.approx(ref[key].item(), rel=1e-5)
