"""PathIndex and affinity labels (METHOD.md 13.4): canned checks 1 and 2 of the IRN spec, plus
brute-force checks of the index arrays and of path_max."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tool.irn.path_index import PathIndex, affinity_labels, direction_path, path_max

# Radius 5 in search order: (dst, interior points in stored order); "mirror" rows are expanded.
R5 = [
    ((0, 1), []), ((1, 0), []), ((0, 2), [(0, 1)]), ((2, 0), [(1, 0)]),
    ((0, 3), [(0, 2), (0, 1)]), ((1, -1), [(0, -1), (1, 0)]), ((1, 1), [(0, 1), (1, 0)]),
    ((3, 0), [(2, 0), (1, 0)]), ((0, 4), [(0, 3), (0, 2), (0, 1)]),
    ((4, 0), [(3, 0), (2, 0), (1, 0)]),
    ((1, -2), [(0, -2), (1, -1), (0, -1), (1, 0)]), ((1, 2), [(0, 2), (1, 1), (0, 1), (1, 0)]),
    ((2, -1), [(1, -1), (2, 0), (0, -1), (1, 0)]), ((2, 1), [(1, 1), (2, 0), (0, 1), (1, 0)]),
    ((2, -2), [(1, -2), (2, -1), (1, -1), (0, -1), (1, 0)]),
    ((2, 2), [(1, 2), (2, 1), (1, 1), (0, 1), (1, 0)]),
    ((1, -3), [(0, -3), (1, -2), (0, -2), (1, -1), (0, -1), (1, 0)]),
    ((1, 3), [(0, 3), (1, 2), (0, 2), (1, 1), (0, 1), (1, 0)]),
    ((2, -3), [(1, -3), (2, -2), (1, -2), (1, -1), (0, -1), (1, 0)]),
    ((2, 3), [(1, 3), (2, 2), (1, 2), (1, 1), (0, 1), (1, 0)]),
    ((3, -2), [(2, -2), (3, -1), (2, -1), (1, -1), (0, -1), (1, 0)]),
    ((3, -1), [(2, -1), (3, 0), (1, -1), (2, 0), (0, -1), (1, 0)]),
    ((3, 1), [(2, 1), (3, 0), (1, 1), (2, 0), (0, 1), (1, 0)]),
    ((3, 2), [(2, 2), (3, 1), (2, 1), (1, 1), (0, 1), (1, 0)]),
    ((1, -4), [(0, -4), (1, -3), (0, -3), (1, -2), (0, -2), (1, -1), (0, -1), (1, 0)]),
    "mirror",
    ((3, -3), [(2, -3), (3, -2), (2, -2), (1, -2), (2, -1), (1, -1), (0, -1), (1, 0)]),
    "mirror",
    ((4, -1), [(3, -1), (4, 0), (2, -1), (3, 0), (1, -1), (2, 0), (0, -1), (1, 0)]),
    "mirror",
    ((2, -4), [(1, -4), (2, -3), (1, -3), (2, -2), (1, -2), (0, -2), (1, -1), (0, -1), (1, 0)]),
    "mirror",
    ((4, -2), [(3, -2), (4, -1), (2, -2), (3, -1), (2, -1), (1, -1), (2, 0), (0, -1), (1, 0)]),
    "mirror",
]
R10_BUCKETS = {2: 2, 3: 2, 4: 4, 5: 2, 6: 6, 7: 4, 8: 10, 9: 2, 10: 12, 11: 4, 12: 12, 13: 2,
               14: 8, 15: 8, 16: 22, 18: 16, 19: 6, 20: 20, 21: 4, 22: 6}


def expanded_r5():
    rows = []
    for row in R5:
        if row == "mirror":
            (dy, dx), inner = rows[-1]
            row = ((dy, -dx), [(y, -x) for y, x in inner])
        rows.append(row)
    return rows


def test_radius5_directions_and_paths():
    pi = PathIndex(5, (20, 30))
    expected = expanded_r5()
    assert pi.radius == 5 and pi.radius_floor == 4
    assert [tuple(d) for d in pi.search_dst.tolist()] == [d for d, _ in expected]
    paths = [p.tolist() for g in pi.search_paths for p in g]
    for (dst, inner), path in zip(expected, paths, strict=True):
        assert [tuple(p) for p in path] == [dst, *inner, (0, 0)]
    assert [g.shape[:2] for g in pi.search_paths] == [
        (2, 2), (2, 3), (4, 4), (2, 5), (4, 6), (2, 7), (8, 8), (6, 10), (4, 11)]
    assert sum(g.shape[0] * g.shape[1] for g in pi.search_paths) == 242


def test_radius10_training_grid():
    pi = PathIndex(10, (128, 128))
    assert pi.radius_floor == 9 and pi.n_directions == 152
    assert pi.src_indices.shape == (13090,) and pi.dst_indices.shape == (152, 13090)
    assert [p.shape for p in pi.path_indices] == [(n, length, 13090)
                                                  for length, n in R10_BUCKETS.items()]
    assert all(p.dtype == np.int64 for p in pi.path_indices)
    assert sum(g.shape[0] * g.shape[1] for g in pi.search_paths) == 2134
    assert np.abs(pi.search_dst).sum() == 1278
    dst = [tuple(d) for d in pi.search_dst.tolist()]
    assert dst[:11] == [(0, 1), (1, 0), (0, 2), (2, 0), (0, 3), (1, -1), (1, 1), (3, 0), (0, 4),
                        (4, 0), (0, 5)]
    assert dst[-6:] == [(3, -9), (3, 9), (7, -7), (7, 7), (9, -3), (9, 3)]
    # sources: the top 119 rows, the middle 110 columns
    ys, xs = np.divmod(pi.src_indices, 128)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 118, 9, 118)


@pytest.mark.parametrize("radius", [2, 3, 5, 10])
def test_directions_are_the_lower_half_disc(radius):
    dst = {tuple(d) for d in PathIndex(radius, (2 * radius, 3 * radius)).search_dst.tolist()}
    brute = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
             if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or (dy == 0 and dx > 0))}
    assert dst == brute


def test_paths_are_point_symmetric_and_thick():
    for dy, dx in [(1, 1), (3, -2), (4, 1), (9, -3)]:
        pts = {tuple(p) for p in direction_path(dy, dx).tolist()}
        assert {(dy - y, dx - x) for y, x in pts} == pts
    assert {tuple(p) for p in direction_path(1, 1).tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_index_arrays_brute_force():
    size = (9, 13)
    pi = PathIndex(3, size)
    r_f, w = 2, size[1]
    srcs = [(y, x) for y in range(size[0] - r_f) for x in range(r_f, w - r_f)]
    assert pi.src_indices.tolist() == [y * w + x for y, x in srcs]
    for d, (dy, dx) in enumerate(pi.search_dst.tolist()):
        assert pi.dst_indices[d].tolist() == [(y + dy) * w + x + dx for y, x in srcs]
    for g, paths in enumerate(pi.search_paths):
        for j, path in enumerate(paths.tolist()):
            for s, (y, x) in enumerate(srcs):
                assert pi.path_indices[g][j, :, s].tolist() == [(y + py) * w + x + px
                                                                for py, px in path]
    assert pi.dst_indices.max() < size[0] * size[1] and min(p.min() for p in pi.path_indices) >= 0


def test_affinity_label_canned_example():
    pi = PathIndex(2, (3, 4))
    assert pi.radius_floor == 1
    assert pi.search_dst.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert pi.src_indices.tolist() == [1, 2, 5, 6]
    assert pi.dst_indices.tolist() == [[2, 3, 6, 7], [5, 6, 9, 10], [4, 5, 8, 9], [6, 7, 10, 11]]
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 2, 1]], np.uint8)
    bg_pos, fg_pos, neg = affinity_labels(label, pi.src_indices, pi.dst_indices)
    for m in (bg_pos, fg_pos, neg):
        assert m.dtype == torch.float32 and m.shape == (4, 4)
    assert bg_pos.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert fg_pos.tolist() == [[0, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert neg.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]]
    # a tensor label map gives the same masks
    same = affinity_labels(torch.from_numpy(label), pi.src_indices, pi.dst_indices)
    assert all(torch.equal(a, b) for a, b in zip(same, (bg_pos, fg_pos, neg)))


def test_affinity_labels_brute_force():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 0, 3, 3, 7, 255], np.uint8), size=(8, 11))
    pi = PathIndex(3, label.shape)
    masks = [m.numpy() for m in affinity_labels(label, pi.src_indices, pi.dst_indices)]
    flat = label.reshape(-1)
    for d in range(pi.n_directions):
        for s, (i, j) in enumerate(zip(pi.src_indices, pi.dst_indices[d])):
            a, b = int(flat[i]), int(flat[j])
            ok = a != 255 and b != 255
            expect = (ok and a == b == 0, ok and a == b != 0, ok and a != b)
            assert tuple(bool(m[d, s]) for m in masks) == expect
    # every valid pair is in exactly one mask
    assert (sum(masks) <= 1).all()


def test_path_max_brute_force():
    gen = torch.Generator().manual_seed(0)
    boundary = torch.rand(2, 1, 7, 10, generator=gen, requires_grad=True)
    pi = PathIndex(3, (7, 10))
    out = path_max(boundary, pi.path_indices)
    assert out.shape == (2, pi.n_directions, len(pi.src_indices))
    flat = boundary.detach().reshape(2, -1)
    paths = [p for g in pi.search_paths for p in g.tolist()]
    w = 10
    for d, path in enumerate(paths):
        for s, src in enumerate(pi.src_indices.tolist()):
            y, x = divmod(src, w)
            idx = [(y + py) * w + x + px for py, px in path]
            assert torch.equal(out[:, d, s], flat[:, idx].max(dim=1).values)
    out.sum().backward()  # one gradient unit per path, on a single point each
    assert boundary.grad.sum().item() == pytest.approx(out.numel())


def test_path_max_does_not_mutate_inputs():
    pi = PathIndex(2, (4, 5))
    before = [p.copy() for p in pi.path_indices]
    path_max(torch.zeros(1, 1, 4, 5), pi.path_indices)
    assert all(type(p) is np.ndarray and np.array_equal(p, q)
               for p, q in zip(pi.path_indices, before))


@pytest.mark.parametrize("bad", [1, 2.5, 0])
def test_bad_radius(bad):
    with pytest.raises(ValueError):
        PathIndex(bad, (10, 10))


def test_grid_too_small():
    with pytest.raises(ValueError, match="too small"):
        PathIndex(5, (4, 20))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_device_follows_inputs(device):
    pi = PathIndex(2, (3, 4))
    label = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 2, 1]], dtype=torch.uint8)
    ref = affinity_labels(label, pi.src_indices, pi.dst_indices)
    got = affinity_labels(label.to(device), pi.src_indices, pi.dst_indices)
    assert all(g.device.type == device and torch.equal(g.cpu(), r) for g, r in zip(got, ref))
    boundary = torch.rand(2, 1, 3, 4)
    out = path_max(boundary.to(device), pi.path_indices)
    assert out.device.type == device and torch.equal(out.cpu(), path_max(boundary, pi.path_indices))
