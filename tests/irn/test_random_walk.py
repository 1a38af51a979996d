"""The random walk of stage 2 (METHOD.md 13.4.5, 13.6): canned check 5 of the spec (the worked
example of 13.6.8) and brute-force checks of each piece, on CPU and, when present, CUDA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tool.irn.path_index import PathIndex
from tool.irn.random_walk import (
    affinity_sparse2dense,
    edge_to_affinity,
    propagate_to_edge,
    refine_cams,
    resolve_engine,
    rw_to_labels,
    to_transition_matrix,
    walk_graph,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# METHOD.md 13.6.8: a 3 x 4 edge map, aeroplane seeded top-left and person bottom-right
EDGE = [[0.1, 0.2, 0.9, 0.1], [0.1, 0.3, 0.8, 0.2], [0.0, 0.1, 0.9, 0.1]]
RW_PLANE = [[0.176495, 0.176496, 0.000001, 0.000014],
            [0.176495, 0.176493, 0.000056, 0.000016],
            [0.176496, 0.176496, 0.000001, 0.000014]]
RW_PERSON = [[0.000009, 0.000008, 0.000001, 0.299965],
             [0.000009, 0.000011, 0.000047, 0.299960],
             [0.000009, 0.000008, 0.000001, 0.299965]]


def canned(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams (20, 3, 4), edge (1, 3, 4)) of the worked example."""
    cams = torch.zeros(20, 3, 4, device=device)
    cams[0, 0, 0] = 1
    cams[14, 2, 3] = 1
    return cams, torch.tensor(EDGE, device=device)[None]


def assert_engines_agree(dense: torch.Tensor, sparse: torch.Tensor) -> None:
    """Within 1e-4 relative, element by element (the atol only covers exact zeros)."""
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-9)


class StandIn(torch.nn.Module):
    """IRNet's inference interface with a fixed edge map: edge_displacement(x_pair) ->
    (edge (1, ceil(H/4), ceil(W/4)), disp (2, h, w))."""

    def __init__(self, edge: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("edge", edge)

    def edge_displacement(self, x_pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = x_pair.shape[2:]
        assert self.edge.shape[1:] == (math.ceil(H / 4), math.ceil(W / 4))
        return self.edge.to(x_pair.device), x_pair.new_zeros(2, *self.edge.shape[1:])


def smooth_case(h: int, w: int, n_ch: int, seed: int, device: str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random edge map in [0, 0.6) and smooth Gaussian-blob CAMs (n_ch, h, w)."""
    g = torch.Generator().manual_seed(seed)
    edge = torch.rand(1, h, w, generator=g) * 0.6
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.rand(n_ch, 2, generator=g) * torch.tensor([h, w])
    cams = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 + h * w / 8))
                        for cy, cx in centres.tolist()])
    return cams.float().to(device), edge.to(device)


# ---- canned check 5 (METHOD.md 13.6.8) ----------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_canned_affinity_and_transition(device):
    _, edge = canned(device)
    src, dst, aff = walk_graph(edge, 5)
    A = affinity_sparse2dense(aff[None, None], src, dst[None], 12)
    for (i, j), v in {(0, 1): 0.8, (0, 4): 0.9, (0, 5): 0.7, (0, 2): 0.1, (3, 7): 0.8,
                      (8, 9): 0.9}.items():
        assert A[i, j].item() == pytest.approx(v, abs=1e-6)
    assert torch.equal(A, A.T) and torch.equal(A.diagonal(), torch.ones(12, device=device))
    T = to_transition_matrix(A, 8, 6)
    torch.testing.assert_close(T.sum(0), torch.ones(12, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_canned_random_walk_both_engines(device):
    cams, edge = canned(device)
    dense = propagate_to_edge(cams, edge, 8, 6, 5, engine="dense")
    sparse = propagate_to_edge(cams, edge, 8, 6, 5, engine="sparse")
    assert dense.shape == (20, 1, 3, 4) and dense.device.type == device
    for rw in (dense, sparse):
        np.testing.assert_allclose(rw[0, 0].cpu(), RW_PLANE, atol=1.5e-6)
        np.testing.assert_allclose(rw[14, 0].cpu(), RW_PERSON, atol=1.5e-6)
        others = [c for c in range(20) if c not in (0, 14)]
        assert not rw[others].any()
    assert_engines_agree(dense, sparse)
    # the reference's IRN defaults (beta 10, 2^8 steps)
    for engine in ("dense", "sparse"):
        rw = propagate_to_edge(cams, edge, 10, 8, engine=engine).cpu()
        np.testing.assert_allclose(rw[0, 0, :, :2], 0.175051, atol=1.5e-6)
        np.testing.assert_allclose(rw[14, 0, :, 3], 0.299992, atol=1.5e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_canned_labels_identical_across_engines(device):
    cams, edge = canned(device)
    out = {}
    for engine in ("dense", "sparse"):
        rw = propagate_to_edge(cams, edge, 8, 6, engine=engine)
        assert rw.max().item() == pytest.approx(0.2999648, abs=2e-6)
        out[engine] = label, soft = rw_to_labels(rw, (10, 15), 0.35)
        assert label.dtype == np.uint8 and label.shape == (10, 15)
        assert soft.dtype == np.float16 and soft.shape == (10, 15, 21)
        row = [1] * 8 + [0] * 3 + [15] * 4
        assert (label == np.array(row, np.uint8)).all()
        np.testing.assert_allclose(soft[0, 0, [0, 1, 15]].astype(np.float32),
                                   [0.3501, 0.5884, 2.87e-5], rtol=2e-3)
        np.testing.assert_allclose(soft[9, 14, [0, 1, 15]].astype(np.float32),
                                   [0.35, 4.68e-5, 1.0], rtol=2e-3)
    assert np.array_equal(out["dense"][0], out["sparse"][0])


@pytest.mark.parametrize("engine", ["dense", "sparse"])
@pytest.mark.parametrize("device", DEVICES)
def test_canned_present_only_equals_20_channels(device, engine):
    cams, edge = canned(device)
    full = propagate_to_edge(cams, edge, 8, 6, engine=engine)
    present = propagate_to_edge(cams[[0, 14]], edge, 8, 6, engine=engine)
    assert torch.equal(present, full[[0, 14]])
    label20, soft20 = rw_to_labels(full, (10, 15), 0.35)
    label2, soft2 = rw_to_labels(present, (10, 15), 0.35, keys=[0, 14])
    assert np.array_equal(label20, label2)
    assert np.array_equal(soft20[..., [0, 1, 15]], soft2)


@pytest.mark.parametrize("device", DEVICES)
def test_refine_cams_end_to_end(device):
    """refine_cams on the worked example: a 10 x 15 image has the 3 x 4 edge grid."""
    model = StandIn(torch.tensor(EDGE)[None]).to(device)
    img_pair = torch.zeros(2, 3, 10, 15, device=device)
    # full-resolution CAMs whose bilinear downsampling is the canned seeds' neighbourhood
    cam_dict = {0: np.zeros((10, 15), np.float32), 14: np.zeros((10, 15), np.float32)}
    cam_dict[0][:3, :3] = 1
    cam_dict[14][-3:, -4:] = 1
    out = {}
    for engine in ("dense", "sparse"):
        for present_only in (False, True):
            out[engine, present_only] = refine_cams(
                model, img_pair, cam_dict, 8, 6, 0.35, engine=engine, present_only=present_only)
    label, soft = out["dense", False]
    assert label.shape == (10, 15) and soft.shape == (10, 15, 21) and soft.dtype == np.float16
    assert set(np.unique(label)) == {0, 1, 15}
    assert label[0, 0] == 1 and label[-1, -1] == 15
    for (engine, present_only), (lab, sft) in out.items():
        assert np.array_equal(lab, label), (engine, present_only)
        if engine == "dense":  # the same engine gives the same numbers for any channel layout
            assert np.array_equal(sft, soft)
    np.testing.assert_allclose(out["sparse", True][1].astype(np.float32),
                               soft.astype(np.float32), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("present_only", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_all_zero_and_empty_dicts_give_background_without_nan(device, present_only):
    """METHOD.md 13.9 Q11: the reference divides 0 by 0 and labels everything aeroplane."""
    model = StandIn(torch.tensor(EDGE)[None]).to(device)
    img_pair = torch.zeros(2, 3, 10, 15, device=device)
    for cam_dict in ({}, {3: np.zeros((10, 15), np.float32)}):
        for engine in ("dense", "sparse"):
            label, soft = refine_cams(model, img_pair, cam_dict, 8, 6, 0.35, engine=engine,
                                      present_only=present_only)
            assert (label == 0).all() and label.shape == (10, 15)
            assert not np.isnan(soft).any() and soft.shape == (10, 15, 21)
            assert (soft[..., 0] == np.float16(0.35)).all() and not soft[..., 1:].any()
    label, soft = rw_to_labels(torch.zeros(20, 1, 3, 4), (10, 15), 0.35)
    assert not label.any() and not np.isnan(soft).any()


# ---- the pieces, against brute force ------------------------------------------------------

@pytest.mark.parametrize("radius", [2, 3, 5])
@pytest.mark.parametrize("device", DEVICES)
def test_edge_to_affinity_is_one_minus_path_max(device, radius):
    size = (radius + 3, 2 * radius + 4)
    index = PathIndex(radius, size)
    g = torch.Generator().manual_seed(radius)
    edge = torch.rand(2, 1, *size, generator=g).to(device)
    before = [p.copy() for p in index.path_indices]
    aff = edge_to_affinity(edge, index.path_indices)
    assert aff.shape == (2, len(index.search_dst), len(index.src_indices))
    assert all(isinstance(p, np.ndarray) and np.array_equal(p, b)  # Q26: not mutated
               for p, b in zip(index.path_indices, before))
    paths = [p for group in index.search_paths for p in group]  # search order
    e = edge.cpu().numpy()[:, 0]
    for s, flat in enumerate(index.src_indices):
        y0, x0 = divmod(int(flat), size[1])
        for d, path in enumerate(paths):
            want = 1 - np.max([e[:, y0 + py, x0 + px] for py, px in path.tolist()], axis=0)
            np.testing.assert_allclose(aff[:, d, s].cpu(), want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_affinity_sparse2dense_against_a_loop(device):
    index = PathIndex(3, (6, 9))
    n = 6 * 9
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(1, *index.dst_indices.shape, generator=g).to(device)
    dense = affinity_sparse2dense(aff, index.src_indices, index.dst_indices, n)
    want = np.eye(n, dtype=np.float32)
    a = aff[0].cpu().numpy()
    for d in range(index.dst_indices.shape[0]):
        for s, src in enumerate(index.src_indices):
            dst = index.dst_indices[d, s]
            want[src, dst] += a[d, s]
            want[dst, src] += a[d, s]
    assert dense.device.type == device
    np.testing.assert_array_equal(dense.cpu().numpy(), want)
    assert torch.equal(dense, dense.T) and (dense.diagonal() == 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_to_transition_matrix_is_a_column_stochastic_power(device):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(9, 9, generator=g, dtype=torch.float64)
    a = ((a + a.T) / 2).fill_diagonal_(1).to(device)
    copy = a.clone()
    for times in (0, 1, 3):
        T = to_transition_matrix(a, 4, times)
        assert torch.equal(a, copy)  # input untouched
        torch.testing.assert_close(T.sum(0), torch.ones(9, dtype=a.dtype, device=device))
        step = a ** 4 / (a ** 4).sum(0, keepdim=True)
        torch.testing.assert_close(T, torch.linalg.matrix_power(step, 2 ** times))


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_walk_graph_is_the_valid_block_of_the_padded_reference(radius):
    """The reference pads, builds the dense affinity of the padded grid and crops it; we keep
    only the pairs inside the image. Both give the same (hw, hw) matrix."""
    h, w = 4, 7
    cams, edge = smooth_case(h, w, 1, seed=radius)
    ph, pw = h + radius, w + 2 * radius
    index = PathIndex(radius, (ph, pw))
    padded = torch.nn.functional.pad(edge[None], (radius, radius, 0, radius), value=1.0)
    aff = edge_to_affinity(padded, index.path_indices)
    big = affinity_sparse2dense(aff, index.src_indices, index.dst_indices, ph * pw)
    big = big.view(ph, pw, ph, pw)[:h, radius:radius + w, :h, radius:radius + w]
    src, dst, a = walk_graph(edge, radius)
    ours = affinity_sparse2dense(a[None, None], src, dst[None], h * w)
    assert torch.equal(ours, big.reshape(h * w, h * w))
    # each unordered in-image pair within the radius once
    ys, xs = np.divmod(np.arange(h * w), w)
    near = [(p, q) for p in range(h * w) for q in range(p + 1, h * w)
            if (ys[p] - ys[q]) ** 2 + (xs[p] - xs[q]) ** 2 < radius ** 2]
    assert sorted(map(tuple, torch.stack([src, dst], 1).sort(1).values.tolist())) == near


@pytest.mark.parametrize("radius,h,w", [(2, 7, 9), (3, 3, 12), (4, 9, 5), (5, 16, 11),
                                        (5, 1, 6)])
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_equals_dense_on_random_cases(device, radius, h, w):
    cams, edge = smooth_case(h, w, 3, seed=h * w + radius, device=device)
    for beta, exp_times in ((8, 6), (10, 3)):
        dense = propagate_to_edge(cams, edge, beta, exp_times, radius, engine="dense")
        sparse = propagate_to_edge(cams[None], edge, beta, exp_times, radius, engine="sparse")
        assert sparse.shape == (3, 1, h, w) and sparse.device.type == device
        assert_engines_agree(dense, sparse)
        keys = [2, 7, 19]
        size = (4 * h - 2, 4 * w - 3)
        assert np.array_equal(rw_to_labels(dense, size, 0.3, keys)[0],
                              rw_to_labels(sparse, size, 0.3, keys)[0])


def test_rw_to_labels_keys_ties_and_shapes():
    rw = torch.zeros(2, 1, 2, 2)
    rw[0, 0, 0, 0] = 1.0  # normalises to 1: class key 4 wins
    rw[1, 0, 1, 1] = 0.5  # 0.5 against tau 0.5: the tie goes to background
    label, soft = rw_to_labels(rw, (8, 8), 0.5, keys=[4, 9])
    assert label[0, 0] == 5 and label[7, 7] == 0 and set(np.unique(label)) <= {0, 5, 10}
    assert soft.shape == (8, 8, 3) and soft[7, 7, 2] == np.float16(0.5)
    label, _ = rw_to_labels(rw.flip(0), (8, 8), 0.4, keys=[4, 9])
    assert label[0, 0] == 10 and label[7, 7] == 5
    label, _ = rw_to_labels(rw, (8, 8), 0.5)  # without keys channel j is class key j
    assert label[0, 0] == 1 and label[7, 7] == 0
    with pytest.raises(ValueError, match="3 keys for 2 channels"):
        rw_to_labels(rw, (8, 8), 0.5, keys=[1, 2, 3])
    with pytest.raises(ValueError, match="larger"):
        rw_to_labels(rw, (9, 8), 0.5, keys=[4, 9])
    with pytest.raises(ValueError, match="finite"):
        rw_to_labels(torch.full((2, 1, 2, 2), float("nan")), (8, 8), 0.5, keys=[4, 9])


def test_engine_choice_and_bad_input():
    assert resolve_engine("auto", "cpu") == "sparse"
    assert resolve_engine("auto", "cuda") == "dense"
    assert resolve_engine("sparse", "cuda") == "sparse"
    cams, edge = canned("cpu")
    with pytest.raises(ValueError, match="engine"):
        propagate_to_edge(cams, edge, 8, 6, engine="fast")
    with pytest.raises(ValueError, match="same grid"):
        propagate_to_edge(cams[:, :2], edge, 8, 6)
    model = StandIn(edge)
    with pytest.raises(ValueError, match="0-based"):
        refine_cams(model, torch.zeros(2, 3, 10, 15), {20: np.zeros((10, 15))}, 8, 6, 0.35)
    with pytest.raises(ValueError, match="shape"):
        refine_cams(model, torch.zeros(2, 3, 10, 15), {2: np.zeros((10, 14))}, 8, 6, 0.35)
