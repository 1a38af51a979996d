"""Stage-3 losses (METHOD.md 14.4, 14.7.2): the canned sample-index table, hand-made steps for
the edge detector, and brute-force loop references for CE, the group loss and the whole BEACON
loss (same ``random.Random`` stream)."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from tool.seg.losses import (
    beacon_edges,
    beacon_group_loss,
    beacon_loss,
    beacon_sample_indices,
    deeplab_loss,
    png_to_soft,
    seg_ce_loss,
    soft_to_target,
)

DELTA = 3.1416 / 8
KX = [[2, 1, 1e-6, -1, -2], [3, 2, 1e-6, -2, -3], [4, 3, 0, -3, -4], [3, 2, 1e-6, -2, -3],
      [2, 1, 1e-6, -1, -2]]
KY = [[2, 3, 4, 3, 2], [1, 2, 3, 2, 1], [1e-6] * 5, [-1, -2, -3, -2, -1], [-2, -3, -4, -3, -2]]


# ----------------------------------------------------------------------------- references
def ref_bin(t: float) -> int:
    for b, (lo, hi) in enumerate([(1, 3), (3, 5), (5, 7)]):
        if lo * DELTA <= t < hi * DELTA:
            return b
    for b, (lo, hi) in zip((4, 5, 6, 7), [(-7, -5), (-5, -3), (-3, -1), (-1, 1)]):
        if lo * DELTA <= t < hi * DELTA:
            return b
    return 3


def ref_edges(z, label_bg, beta=100.0):
    """Loop version of the edge detector on float64 numpy: (mag, bins, pos) as lists."""
    n_b, c_n, h, w = z.shape
    mag = np.zeros((n_b, c_n - 1, h, w))
    bins = np.zeros((n_b, c_n - 1, h, w), dtype=np.int64)
    pos = np.zeros((n_b, c_n - 1, h, w), dtype=bool)
    for n in range(n_b):
        e = np.exp(beta * z[n] - (beta * z[n]).max(axis=0))
        p = e / e.sum(axis=0)
        for c in range(1, c_n):
            pad = np.zeros((h + 4, w + 4))
            pad[2:-2, 2:-2] = p[c]
            gx, gy = np.zeros((h, w)), np.zeros((h, w))
            for a in range(5):
                for b in range(5):
                    gx += KX[a][b] * pad[a:a + h, b:b + w]
                    gy += KY[a][b] * pad[a:a + h, b:b + w]
            gx, gy = gx * label_bg[n, c], gy * label_bg[n, c]
            for y in range(h):
                for x in range(w):
                    mag[n, c - 1, y, x] = math.sqrt(gx[y, x] ** 2 + gy[y, x] ** 2 + 1e-8)
                    bins[n, c - 1, y, x] = ref_bin(math.atan2(gy[y, x], gx[y, x]))
            peak = mag[n, c - 1].max()
            if peak > 1 and label_bg[n, c] == 1:
                pos[n, c - 1] = mag[n, c - 1] >= 0.8 * peak
    return mag, bins, pos


def ref_indices(bins, pos, step):
    h, w = pos.shape
    outs, ins = [], []
    for y in range(h):
        for x in range(w):
            if not pos[y, x]:
                continue
            i, o = y * w + x, int(bins[y, x]) + 1
            if o in (4, 8):
                outs.append(i - step * w)
                ins.append(i + w)
            elif o in (2, 6):
                outs.append(i - 1)
                ins.append(i + 1)
            else:
                outs.append(i)
                ins.append(i)

    def keep(j):
        return j % (w - 1) not in (0, 1) and 0 < j < h * w - 1

    return [j for j in outs if keep(j)], [j for j in ins if keep(j)]


def ref_group(S, Sb, dim):
    k = len(S)
    if dim == 1:
        u = [sum(S[i][j] for j in range(k)) / k for i in range(k)]
        ub = [sum(Sb[i][j] for j in range(k)) / k for i in range(k)]
    else:
        u = [sum(S[i][j] for i in range(k)) / k for j in range(k)]
        ub = [sum(Sb[i][j] for i in range(k)) / k for j in range(k)]
    mu = sum(sum(r) for r in S) / k ** 2
    mub = sum(sum(r) for r in Sb) / k ** 2
    groups = {"FP": [], "FN": [], "TP": [], "TN": []}
    for x in range(k):
        m, d = ub[x] > mub, u[x] > mu
        key = ("TN" if d else "FP") if m else ("FN" if d else "TP")
        groups[key].append(u[x])
    sign = {"FP": -1, "FN": 1, "TP": 1, "TN": -1}
    return sum(sign[g] * sum(v) / len(v) for g, v in groups.items() if v)


def ref_softmax_col(x, p):
    col = x[:, p]
    e = np.exp(col - col.max())
    return e / e.sum()


def ref_beacon(z, ft, mask, label_bg, step, k, seed, beta=100.0):
    """(loss or None, {n: set of sampled out pixels}, {n: number of contributing classes})."""
    rng = random.Random(seed)
    _, bins, pos = ref_edges(z, label_bg, beta)
    sampled, count = {}, {}
    if pos.sum() < 10:
        return None, sampled, count
    total, any_term = 0.0, False
    for n in range(z.shape[0]):
        for c in range(1, z.shape[1]):
            if label_bg[n, c] != 1:
                continue
            outs, ins = ref_indices(bins[n, c - 1], pos[n, c - 1], step)
            if len(outs) <= k or len(ins) <= k:
                continue
            r_out = rng.sample(range(len(outs)), k)
            r_in = rng.sample(range(len(ins)), k)
            po = [outs[r] for r in r_out]
            pi = [ins[r] for r in r_in]
            f, m = ft[n].reshape(ft.shape[1], -1), mask[n].reshape(mask.shape[1], -1)
            A = [ref_softmax_col(f, p) for p in po]
            B = [ref_softmax_col(f, p) for p in pi]
            Ab = [ref_softmax_col(m, p) for p in po]
            Bb = [ref_softmax_col(m, p) for p in pi]
            S = [[float(A[i] @ B[j]) for j in range(k)] for i in range(k)]
            Sb = [[float(Ab[i] @ Bb[j]) for j in range(k)] for i in range(k)]
            total += ref_group(S, Sb, 1) + ref_group(S, Sb, 0)
            any_term = True
            sampled.setdefault(n, set()).update(po)
            count[n] = count.get(n, 0) + 1
    return (total / z.shape[0] if any_term else None), sampled, count


# ----------------------------------------------------------------------------- synthetic data
def label_of(n, classes, n_classes=21):
    lb = torch.zeros(n, n_classes, dtype=torch.float64)
    lb[:, 0] = 1
    for i, cs in enumerate(classes):
        for c in cs:
            lb[i, c] = 1
    return lb


COCO_CLASSES = {3: 3, 5: 50, 7: 80, 12: 45, 15: 79}  # the synthetic batch's classes at 81


def synthetic_batch(seed=0, h=32, w=32, d=16, n_classes=21):
    """Two samples with big squares: sample 0 holds classes 3 and 7 (labels 3, 5, 7; 5 is never
    predicted), sample 1 class 12 (and a predicted class 15 the label says is absent). With
    ``n_classes`` 81 (COCO) these classes become ``COCO_CLASSES``' (80 the last channel)."""
    g = torch.Generator().manual_seed(seed)
    cl = COCO_CLASSES if n_classes == 81 else {c: c for c in COCO_CLASSES}
    regions = [[(cl[3], 4, 20, 6, 22), (cl[7], 18, 30, 16, 30)],
               [(cl[12], 6, 26, 8, 28), (cl[15], 0, 5, 0, 6)]]
    z = 0.5 * torch.randn(2, n_classes, h, w, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, n_classes, h, w, dtype=torch.float64)
    mask[:, 0] = 0.35
    for n, regs in enumerate(regions):
        z[n, 0] += 5
        for c, y0, y1, x0, x1 in regs:
            z[n, :, y0:y1, x0:x1] -= 5 * (torch.arange(n_classes) == 0).double()[:, None, None]
            z[n, c, y0:y1, x0:x1] += 5
            mask[n, c, y0:y1, x0:x1] = 0.5 + 0.5 * torch.rand(y1 - y0, x1 - x0, generator=g,
                                                                dtype=torch.float64)
    mask[:, :, :, -3:] = 0  # a strip of crop padding
    ft = 2.0 * torch.randn(2, d, h, w, generator=g, dtype=torch.float64)
    return z, ft, mask, label_of(2, [[cl[3], cl[5], cl[7]], [cl[12]]], n_classes)


# ----------------------------------------------------------------------------- CE and targets
def test_soft_to_target_ties_and_zero_vector():
    m = torch.zeros(1, 21, 2, 2)
    m[0, 5, 0, 0] = m[0, 2, 0, 0] = 0.7  # tie between 2 and 5
    m[0, 9, 0, 1] = 0.2
    m[0, 0, 1, 0] = m[0, 4, 1, 0] = 0.35  # tie with the background channel
    # (1, 1) stays the all-zero padding vector
    expected = torch.tensor([[[2, 9], [0, 0]]])
    assert torch.equal(soft_to_target(m), expected)
    assert torch.equal(soft_to_target(m.half()), expected)
    assert soft_to_target(m).dtype == torch.long


def brute_ce(logits, target, ignore):
    total, count = 0.0, 0
    x = logits.double().numpy()
    for n in range(x.shape[0]):
        for y in range(x.shape[2]):
            for w in range(x.shape[3]):
                t = int(target[n, y, w])
                if t == ignore:
                    continue
                v = x[n, :, y, w]
                total += -(v[t] - v.max() - math.log(np.exp(v - v.max()).sum()))
                count += 1
    return total / count


def test_ce_ignores_255():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 21, 5, 6, generator=g)
    target = torch.randint(0, 21, (2, 5, 6), generator=g)
    target[0, :2] = 255
    target[1, 4, 3:] = 255
    assert seg_ce_loss(logits, target).item() == pytest.approx(brute_ce(logits, target, 255),
                                                               rel=1e-5)
    # nothing ignored: the plain mean over every pixel (MuSCLe's CE)
    full = torch.randint(0, 21, (2, 5, 6), generator=g)
    assert seg_ce_loss(logits, full).item() == pytest.approx(brute_ce(logits, full, -1),
                                                             rel=1e-5)


def test_deeplab_loss_weights_the_aux_head():
    g = torch.Generator().manual_seed(2)
    out, aux = torch.randn(2, 21, 4, 5, generator=g), torch.randn(2, 21, 4, 5, generator=g)
    target = torch.randint(0, 21, (2, 4, 5), generator=g)
    target[0, 0] = 255
    ce_out, ce_aux = brute_ce(out, target, 255), brute_ce(aux, target, 255)
    assert deeplab_loss(out, aux, target).item() == pytest.approx(ce_out + 0.5 * ce_aux,
                                                                  rel=1e-5)
    assert deeplab_loss(out, aux, target, aux_weight=0.25).item() == pytest.approx(
        ce_out + 0.25 * ce_aux, rel=1e-5)
    assert deeplab_loss(out, None, target).item() == pytest.approx(ce_out, rel=1e-5)


def test_png_to_soft_one_hot_with_zero_vectors():
    t = torch.tensor([[[0, 3, 255], [20, 1, 0]]])
    s = png_to_soft(t)
    assert s.shape == (1, 21, 2, 3) and s.dtype == torch.float32
    assert torch.equal(s.argmax(1)[0, 0, :2], torch.tensor([0, 3]))
    assert s[0, 20, 1, 0] == 1 and s[0, 1, 1, 1] == 1
    assert s.sum(1).tolist() == [[[1, 1, 0], [1, 1, 1]]]
    pad = torch.zeros(1, 2, 3, dtype=torch.bool)
    pad[0, 1, 2] = True
    assert png_to_soft(t, pad_mask=pad).sum(1).tolist() == [[[1, 1, 0], [1, 1, 0]]]


def test_png_to_soft_81_classes_brute_force():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 81, (2, 5, 6), generator=g)
    t[0, 0, :3] = torch.tensor([80, 255, 81])  # the last class, ignore, beyond the classes
    s = png_to_soft(t, num_classes=81)
    assert s.shape == (2, 81, 5, 6) and s.dtype == torch.float32
    want = torch.zeros(2, 81, 5, 6)
    for n, y, x in np.ndindex(2, 5, 6):
        if int(t[n, y, x]) < 81:
            want[n, int(t[n, y, x]), y, x] = 1
    assert torch.equal(s, want) and s[0, 80, 0, 0] == 1 and s[0, :, 0, 1:3].sum() == 0


# ----------------------------------------------------------------------------- edges
def step_logits(h, w, c, region):
    z = torch.zeros(1, 21, h, w)
    z[0, 0] = 1
    z[0, 0][region] = 0
    z[0, c][region] = 1
    return z


def test_edges_of_a_vertical_step():
    h, w, c = 16, 16, 4
    z = step_logits(h, w, c, (slice(None), slice(0, 8)))  # class c on the left half
    lb = label_of(1, [[c]]).float()
    mag, bins, pos = beacon_edges(z, lb)
    assert mag.shape == bins.shape == pos.shape == (1, 20, h, w)
    rows = slice(2, h - 2)  # away from the top/bottom padding
    m = mag[0, c - 1, rows]
    # the two pixels next to the step: |G| = 14 + 9 (+ 4e-6) = 23
    assert torch.allclose(m[:, 7], torch.full((h - 4,), 23.0), rtol=1e-6)
    assert torch.allclose(m[:, 8], torch.full((h - 4,), 23.0), rtol=1e-6)
    # higher on the left -> angle ~0 -> bin 7; the zero padding at the left border makes a
    # reversed step there (S11): |G| = 23 at column 0, angle ~pi -> bin 3
    assert (bins[0, c - 1, rows, 7] == 7).all() and (bins[0, c - 1, rows, 8] == 7).all()
    assert torch.allclose(m[:, 0], torch.full((h - 4,), 23.0), rtol=1e-6)
    assert (bins[0, c - 1, rows, 0] == 3).all()
    cols = pos[0, c - 1, rows].any(0).nonzero().flatten().tolist()
    assert cols == [0, 7, 8]
    assert not pos[0, torch.arange(20) != c - 1].any()  # no other class has edges


def test_edges_of_a_horizontal_step_and_reversed_steps():
    h, w, c = 16, 16, 9
    lb = label_of(1, [[c]]).float()
    cols = slice(2, w - 2)
    _, bins, pos = beacon_edges(step_logits(h, w, c, (slice(0, 8), slice(None))), lb)  # top
    assert (bins[0, c - 1, 7, cols] == 1).all() and (bins[0, c - 1, 8, cols] == 1).all()
    assert (bins[0, c - 1, 0, cols] == 5).all()  # the top border, higher below
    assert pos[0, c - 1, :, cols].any(1).nonzero().flatten().tolist() == [0, 7, 8]
    _, bins, _ = beacon_edges(step_logits(h, w, c, (slice(8, None), slice(None))), lb)  # bottom
    assert (bins[0, c - 1, 7, cols] == 5).all() and (bins[0, c - 1, 8, cols] == 5).all()
    _, bins, _ = beacon_edges(step_logits(h, w, c, (slice(None), slice(8, None))), lb)  # right
    assert (bins[0, c - 1, cols, 7] == 3).all() and (bins[0, c - 1, cols, 8] == 3).all()


def test_absent_class_has_no_edges_and_no_grad():
    h, w, c = 16, 16, 4
    z = step_logits(h, w, c, (slice(None), slice(0, 8))).requires_grad_(True)
    mag, _, pos = beacon_edges(z, label_of(1, [[2]]).float())  # the label says c is absent
    assert not pos.any()
    assert torch.allclose(mag[0, c - 1], torch.full((h, w), 1e-4))
    assert not mag.requires_grad


def test_edges_match_the_loop_reference():
    z, _, _, lb = synthetic_batch()
    mag, bins, pos = beacon_edges(z, lb)
    r_mag, r_bins, r_pos = ref_edges(z.numpy(), lb.numpy())
    np.testing.assert_allclose(mag.numpy(), r_mag, rtol=1e-9, atol=1e-12)
    assert np.array_equal(bins.numpy(), r_bins)
    assert np.array_equal(pos.numpy(), r_pos)


# ----------------------------------------------------------------------------- sample indices
def single_edge(h, w, row, col, b):
    bins = torch.full((h, w), 7, dtype=torch.long)
    pos = torch.zeros(h, w, dtype=torch.bool)
    bins[row, col], pos[row, col] = b, True
    return bins, pos


@pytest.mark.parametrize("row,col,bins,out,inn", [
    (5, 5, (3, 7), [], []),  # raw (-19, 77): out < 0, 77 mod 11 = 0
    (5, 5, (1, 5), [64], []),  # raw (64, 66): 66 mod 11 = 0
    (5, 5, (0, 2, 4, 6), [65], [65]),
    (8, 5, (3, 7), [17], [113]),
    (8, 5, (1, 5), [], [102]),  # raw (100, 102): 100 mod 11 = 1
    (8, 5, (0, 2, 4, 6), [101], [101]),
])
def test_sample_indices_canned_table(row, col, bins, out, inn):
    for b in bins:
        o, i = beacon_sample_indices(*single_edge(10, 12, row, col, b), step=7)
        assert o.dtype == i.dtype == torch.long
        assert o.tolist() == out and i.tolist() == inn


def test_sample_indices_follow_the_edge_pixels_row_major():
    bins, pos = single_edge(10, 12, 8, 5, 3)  # i = 101, out 17
    bins[2, 6], pos[2, 6] = 0, True  # i = 30, out 30 (30 mod 11 = 8)
    o, i = beacon_sample_indices(bins, pos, step=7)
    assert o.tolist() == [30, 17] and i.tolist() == [30, 113]
    # step moves only the vertical-boundary "out" sample
    o, i = beacon_sample_indices(bins, pos, step=3)  # 101 - 36 = 65
    assert o.tolist() == [30, 65] and i.tolist() == [30, 113]


def test_sample_indices_match_the_loop_reference():
    g = torch.Generator().manual_seed(3)
    bins = torch.randint(0, 8, (13, 17), generator=g)
    pos = torch.rand(13, 17, generator=g) > 0.5
    o, i = beacon_sample_indices(bins, pos, step=7)
    r_o, r_i = ref_indices(bins.numpy(), pos.numpy(), 7)
    assert o.tolist() == r_o and i.tolist() == r_i


# ----------------------------------------------------------------------------- group loss
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dim", [0, 1])
def test_group_loss_matches_brute_force(seed, dim):
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(12, 12, generator=g, dtype=torch.float64)
    Sb = torch.rand(12, 12, generator=g, dtype=torch.float64)
    got = beacon_group_loss(S, Sb, dim).item()
    assert got == pytest.approx(ref_group(S.tolist(), Sb.tolist(), dim), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("dim", [0, 1])
def test_group_loss_with_empty_groups(dim):
    g = torch.Generator().manual_seed(4)
    S = torch.rand(10, 10, generator=g, dtype=torch.float64)
    u = S.mean(dim=dim)
    above = u > S.mean()
    # constant mask: m is all False, so only FN and TP remain
    flat = torch.full((10, 10), 0.3, dtype=torch.float64)
    assert beacon_group_loss(S, flat, dim).item() == pytest.approx(
        u[above].mean().item() + u[~above].mean().item(), rel=1e-12)
    assert beacon_group_loss(S, flat, dim).item() == pytest.approx(
        ref_group(S.tolist(), flat.tolist(), dim), rel=1e-12)
    # mask = S: m == d, so FP and FN are empty: avg_TP u - avg_TN u
    assert beacon_group_loss(S, S, dim).item() == pytest.approx(
        u[~above].mean().item() - u[above].mean().item(), rel=1e-12)


# ----------------------------------------------------------------------------- whole BEACON
def test_beacon_matches_the_loop_reference_float64():
    z, ft, mask, lb = synthetic_batch()
    for seed in (0, 5):
        loss, edge_mag = beacon_loss(z, ft, mask, lb, step=7, k=16, rng=random.Random(seed))
        ref, _, count = ref_beacon(z.numpy(), ft.numpy(), mask.numpy(), lb.numpy(), 7, 16, seed)
        assert count == {0: 2, 1: 1}  # classes 3 and 7, then 12; 5 has no edges, 15 no label
        assert loss is not None and loss.item() == pytest.approx(ref, rel=1e-10)
        mag, _, _ = beacon_edges(z, lb)
        assert torch.allclose(edge_mag, mag.sum(1))
    # rng None is a fresh Random(0)
    assert beacon_loss(z, ft, mask, lb, k=16)[0].item() == pytest.approx(
        beacon_loss(z, ft, mask, lb, k=16, rng=random.Random(0))[0].item(), rel=1e-12)


def test_beacon_81_classes_matches_the_loop_reference():
    """COCO's 81 channels: classes 3, 80 (the last) and 45 contribute, 50 has no edges, 79 no
    label; the loss equals the loop reference's (the class count read from the tensors)."""
    z, ft, mask, lb = synthetic_batch(n_classes=81)
    assert z.shape[1] == mask.shape[1] == lb.shape[1] == 81
    loss, edge_mag = beacon_loss(z, ft, mask, lb, step=7, k=16, rng=random.Random(4))
    ref, _, count = ref_beacon(z.numpy(), ft.numpy(), mask.numpy(), lb.numpy(), 7, 16, 4)
    assert count == {0: 2, 1: 1}
    assert loss is not None and loss.item() == pytest.approx(ref, rel=1e-10)
    mag, _, pos = beacon_edges(z, lb)
    assert mag.shape == (2, 80, 32, 32) and torch.allclose(edge_mag, mag.sum(1))
    assert pos[0, 79].any() and not pos[1, 78].any()  # class 80 has edges, absent 79 none
    # a VOC-sized mask or label with 81-channel logits is refused
    with pytest.raises(ValueError, match="must share C"):
        beacon_loss(z, ft, mask[:, :21], lb)
    with pytest.raises(ValueError, match="must share C"):
        beacon_loss(z, ft, mask, lb[:, :21])


def test_beacon_float32_close_to_the_reference():
    z, ft, mask, lb = synthetic_batch()
    loss, edge_mag = beacon_loss(z.float(), ft.float(), mask.float(), lb.float(), k=16,
                                 rng=random.Random(1))
    ref, _, _ = ref_beacon(z.numpy(), ft.numpy(), mask.numpy(), lb.numpy(), 7, 16, 1)
    assert loss.dtype == torch.float32 and edge_mag.shape == (2, 32, 32)
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_beacon_gradient_only_at_sampled_out_pixels():
    z, ft, mask, lb = synthetic_batch()
    z.requires_grad_(True)
    ft.requires_grad_(True)
    k = 16
    loss, _ = beacon_loss(z, ft, mask, lb, k=k, rng=random.Random(2))
    loss.backward()
    assert z.grad is None  # the edges are computed without gradient
    _, sampled, count = ref_beacon(z.detach().numpy(), ft.detach().numpy(), mask.numpy(),
                                   lb.numpy(), 7, k, 2)
    for n in range(2):
        hit = (ft.grad[n] != 0).any(0).flatten().nonzero().flatten().tolist()
        assert 0 < len(hit) <= k * count[n]
        assert set(hit) <= sampled[n]


def test_beacon_divides_by_the_batch_size():
    z, ft, mask, lb = synthetic_batch()
    one, _ = beacon_loss(z[:1], ft[:1], mask[:1], lb[:1], k=16, rng=random.Random(3))
    # a second sample with no foreground: no draws, no term, but N = 2
    z2 = torch.cat([z[:1], torch.zeros_like(z[:1])])
    z2[1, 0] = 1
    lb2 = torch.cat([lb[:1], label_of(1, [[]])])
    two, _ = beacon_loss(z2, torch.cat([ft[:1], ft[1:]]), torch.cat([mask[:1], mask[1:]]), lb2,
                         k=16, rng=random.Random(3))
    assert two.item() == pytest.approx(one.item() / 2, rel=1e-12)


def test_beacon_no_loss_cases():
    h = w = 24
    ft = torch.randn(1, 8, h, w, dtype=torch.float64)
    mask = torch.zeros(1, 21, h, w, dtype=torch.float64)
    lb = label_of(1, [[3]])
    # nothing predicted: no edges at all
    z = torch.zeros(1, 21, h, w, dtype=torch.float64)
    z[0, 0] = 1
    loss, edge_mag = beacon_loss(z, ft, mask, lb)
    assert loss is None and edge_mag.shape == (1, h, w)
    # a one-pixel object: 4 edge pixels over the batch, fewer than 10
    z1 = z.clone()
    z1[0, 0, 10, 10], z1[0, 3, 10, 10] = 0, 1
    assert int(beacon_edges(z1, lb)[2].sum()) == 4
    assert beacon_loss(z1, ft, mask, lb)[0] is None
    # enough edges, but no class has more than k samples on both sides
    z2 = z.clone()
    z2[0, 0, 6:18, 6:18], z2[0, 3, 6:18, 6:18] = 0, 1
    _, bins, pos = beacon_edges(z2, lb)
    n_out, n_in = (len(x) for x in beacon_sample_indices(bins[0, 2], pos[0, 2]))
    assert int(pos.sum()) >= 10 and min(n_out, n_in) > 16
    assert beacon_loss(z2, ft, mask, lb, k=16)[0] is not None
    assert beacon_loss(z2, ft, mask, lb, k=min(n_out, n_in))[0] is None


def test_beacon_rejects_mismatched_sizes():
    z, ft, mask, lb = synthetic_batch()
    with pytest.raises(ValueError, match="share H x W"):
        beacon_loss(z, ft[..., :-1], mask, lb)
