"""tool/cam/losses.py against independent references: explicit loops, plain numpy, hand-made
cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp

from tool.cam import losses as L
from tool.common.errors import UserError

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _multi_hot(rows: list[list[int]], k: int = 20) -> torch.Tensor:
    """Class-index lists (0-based foreground) -> (N, k) float64 multi-hot."""
    out = torch.zeros(len(rows), k, dtype=DT)
    for n, cls in enumerate(rows):
        out[n, cls] = 1
    return out


# ----------------------------------------------------------------------------- classification
def test_with_background_prepends_one():
    lab = _multi_hot([[0, 5], []])
    lbg = L.with_background(lab)
    assert lbg.shape == (2, 21)
    assert lbg[:, 0].tolist() == [1.0, 1.0]
    assert torch.equal(lbg[:, 1:], lab)


def _focal_ref(p: np.ndarray, y: np.ndarray, alpha: float, gamma: float) -> float:
    total = 0.0
    for n in range(p.shape[0]):
        for c in range(p.shape[1]):
            pt = p[n, c] if y[n, c] == 1 else 1 - p[n, c]
            total += -alpha * (1 - pt) ** gamma * math.log(pt + 1e-9)
    return total / p.shape[0]


@pytest.mark.parametrize("alpha,gamma", [(1.0, 2.0), (0.5, 2.0), (0.25, 0.0)])
def test_focal_loss_matches_loops(alpha, gamma):
    probs = torch.rand(3, 20, generator=_gen(0), dtype=DT)
    labels = (torch.rand(3, 20, generator=_gen(1)) > 0.7).to(DT)
    ref = _focal_ref(probs.numpy(), labels.numpy(), alpha, gamma)
    no_div = L.focal_loss(probs, labels, alpha, gamma, divide_by_alpha=False)
    assert no_div.item() == pytest.approx(ref, rel=1e-12)
    # released PL-Mix divides by sum(alpha) = alpha
    assert L.focal_loss(probs, labels, alpha, gamma).item() == pytest.approx(ref / alpha, rel=1e-12)


def _mlsm_ref(z: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for n in range(z.shape[0]):
        row = 0.0
        for c in range(z.shape[1]):
            log_sig = -math.log1p(math.exp(-z[n, c]))
            log_sig_neg = -math.log1p(math.exp(z[n, c]))
            row += -(y[n, c] * log_sig + (1 - y[n, c]) * log_sig_neg)
        total += row / z.shape[1]
    return total / z.shape[0]


def _pairwise_ref(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for n in range(p.shape[0]):
        s = 0.0
        for i in range(20):  # all 400 pairs, zero-filled ones included
            pos_i = p[n, i] if y[n, i] == 1 else 0.0
            for j in range(20):
                neg_j = p[n, j] if y[n, j] == 0 else 0.0
                s += math.exp(neg_j - pos_i)
        total += math.log(1 + s / 400)
    return total / p.shape[0]


def test_mlsm_and_pairwise_match_loops():
    z = torch.randn(4, 20, generator=_gen(2), dtype=DT) * 3
    y = (torch.rand(4, 20, generator=_gen(3)) > 0.6).to(DT)
    assert L.multilabel_soft_margin(z, y).item() == pytest.approx(
        _mlsm_ref(z.numpy(), y.numpy()), rel=1e-12)
    p = torch.sigmoid(z)
    assert L.lse_pairwise_loss(p, y).item() == pytest.approx(
        _pairwise_ref(p.numpy(), y.numpy()), rel=1e-12)


def test_classification_loss_is_sum_on_foreground_logits():
    logits = (torch.randn(3, 21, generator=_gen(4), dtype=DT) * 2).requires_grad_()
    y = _multi_hot([[0], [3, 7], [19]])
    z = logits.detach().numpy()[:, 1:]
    p = 1 / (1 + np.exp(-z))
    ref = (_focal_ref(p, y.numpy(), 1.0, 2.0) + _mlsm_ref(z, y.numpy())
           + _pairwise_ref(p, y.numpy()))
    loss = L.classification_loss(logits, y)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    assert torch.all(logits.grad[:, 0] == 0)  # background logit is never supervised (Q20)
    assert torch.all(logits.grad[:, 1:].abs() > 0)


# ----------------------------------------------------------------------------- ER
def _er_ref(cam: np.ndarray, sgc: np.ndarray, lbg: np.ndarray, k: int) -> float:
    vals = []
    for n in range(cam.shape[0]):
        diffs = []
        for c in range(cam.shape[1]):
            a, b = cam[n, c] * lbg[n, c], sgc[n, c] * lbg[n, c]
            diffs += [abs(v) for v in (a - b).ravel().tolist()]
        vals += sorted(diffs, reverse=True)[:k]
    return sum(vals) / len(vals)


@pytest.mark.parametrize("ratio,k", [(0.2, 18), (0.05, 4), (10.0, 21 * 30)])
def test_er_loss_topk_matches_sort(ratio, k):
    # 3 positives in the batch, H*W = 30: k = floor(ratio * 3 * 30), clamped to 21*30 (Q18)
    cam = torch.rand(2, 21, 5, 6, generator=_gen(5), dtype=DT).requires_grad_()
    sgc = torch.rand(2, 21, 5, 6, generator=_gen(6), dtype=DT).requires_grad_()
    y = _multi_hot([[2, 9], [14]])
    lbg = np.concatenate([np.ones((2, 1)), y.numpy()], axis=1)
    ref = _er_ref(cam.detach().numpy(), sgc.detach().numpy(), lbg, k)
    loss = L.er_loss(cam, sgc, y, topk_ratio=ratio)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    assert cam.grad is None  # the CAM side is the detached target
    present = lbg.astype(bool)
    assert torch.all(sgc.grad[~torch.from_numpy(present)] == 0)
    assert sgc.grad.abs().sum() > 0


def test_er_loss_without_positives_is_zero():
    cam = torch.rand(1, 21, 3, 3, generator=_gen(7))
    sgc = torch.rand(1, 21, 3, 3, generator=_gen(8), requires_grad=True)
    loss = L.er_loss(cam, sgc, torch.zeros(1, 20))
    assert loss.item() == 0.0
    loss.backward()


# ----------------------------------------------------------------------------- IMC
def _imc_ref(emb: np.ndarray, lab: np.ndarray, t: float = 0.1) -> float | None:
    n = emb.shape[0]
    e = [v / max(np.linalg.norm(v), 1e-6) for v in emb]
    total, any_anchor = 0.0, False
    for i in range(n):
        p_sum = n_sum = 1e-6
        n_pos = n_neg = 0
        for j in range(i + 1, n):
            li, lj = lab[i].astype(bool), lab[j].astype(bool)
            s = math.exp(float(np.dot(e[i], e[j])) / t)
            if np.array_equal(li, lj):
                p_sum, n_pos = p_sum + s, n_pos + 1
            elif not np.any(li & lj):
                n_sum, n_neg = n_sum + s, n_neg + 1
        if n_pos >= 1 and n_neg >= 1 and n_neg > n_pos:
            total += -math.log(p_sum / (p_sum + n_sum))
            any_anchor = True
    return total / n if any_anchor else None


def test_imc_none_when_no_anchor_contributes():
    emb = torch.randn(3, 8, generator=_gen(9), dtype=DT)
    # anchor 0: 1 pos, 1 neg (#neg == #pos, rejected); anchor 1: only a negative
    assert L.image_level_contrast(emb, _multi_hot([[1], [1], [4]])) is None
    assert _imc_ref(emb.numpy(), _multi_hot([[1], [1], [4]]).numpy()) is None
    # identical labels only: no negative anywhere; partial overlaps are neither
    assert L.image_level_contrast(emb, _multi_hot([[1, 2], [1, 2], [2]])) is None


def test_imc_single_anchor_by_hand():
    emb = torch.randn(4, 8, generator=_gen(10), dtype=DT).requires_grad_()
    lab = _multi_hot([[3], [3], [5], [6, 7]])
    # only anchor 0 qualifies: pos {1}, neg {2, 3}; anchor 1 has no later positive
    e = F.normalize(emb.detach(), dim=1).numpy()
    pos = 1e-6 + math.exp(e[0] @ e[1] / 0.1)
    neg = 1e-6 + math.exp(e[0] @ e[2] / 0.1) + math.exp(e[0] @ e[3] / 0.1)
    loss = L.image_level_contrast(emb, lab)
    assert loss.item() == pytest.approx(-math.log(pos / (pos + neg)) / 4, rel=1e-10)
    loss.backward()
    assert torch.all(emb.grad[0] != 0)


def test_imc_random_batch_matches_loops():
    pool = [[0], [0], [1, 2], [3], [1, 2], [4], [0, 3], [5]]
    emb = torch.randn(8, 16, generator=_gen(11), dtype=DT) * 0.3
    lab = _multi_hot(pool)
    ref = _imc_ref(emb.numpy(), lab.numpy())
    assert ref is not None
    assert L.image_level_contrast(emb, lab).item() == pytest.approx(ref, rel=1e-10)


# ----------------------------------------------------------------------------- PixPro
def test_pixpro_matches_per_pixel_cosine():
    q = torch.rand(2, 21, 8, 9, generator=_gen(12), dtype=DT)
    k = torch.rand(2, 21, 8, 9, generator=_gen(13), dtype=DT)
    q[0, :, 2, 3] = 0  # an all-zero query pixel: cosine 0 via the eps clamp
    q.requires_grad_()
    k.requires_grad_()
    c1 = torch.tensor([[1, 2, 5, 6], [0, 0, 8, 9]])
    c2 = torch.tensor([[3, 0, 5, 6], [0, 0, 8, 9]])
    qn, kn = q.detach().numpy(), k.detach().numpy()
    means = []
    for n in range(2):
        t1, l1, h, w = c1[n].tolist()
        t2, l2 = c2[n, 0].item(), c2[n, 1].item()
        cos = []
        for i in range(h):
            for j in range(w):
                a, b = qn[n, :, t1 + i, l1 + j], kn[n, :, t2 + i, l2 + j]
                cos.append(float(a @ b) / math.sqrt(max(a @ a * (b @ b), 1e-16)))
        means.append(sum(cos) / len(cos))
    loss = L.pixpro_loss(q, k, c1, c2)
    assert loss.item() == pytest.approx(1 - sum(means) / 2, rel=1e-12)
    loss.backward()
    assert q.grad.abs().sum() > 0
    assert k.grad is None  # view 2 is the no-grad target


# ----------------------------------------------------------------------------- Sinkhorn
def _sinkhorn_ref(C, mu, nu, eps=0.1, iters=10, jacobi=True, C_prod=None):
    """Plain numpy log-domain Sinkhorn; C_prod is the (fixed) cost of the final product."""
    u, v = np.zeros(C.shape[0]), np.zeros(C.shape[1])
    for _ in range(iters):
        G = (-C + u[:, None] + v[None, :]) / eps
        u_new = u + eps * (np.log(mu + 1e-6) - logsumexp(G, axis=1))
        if not jacobi:
            G = (-C + u_new[:, None] + v[None, :]) / eps
        v = v + eps * (np.log(nu + 1e-6) - logsumexp(G, axis=0))
        u = u_new
    pi = np.exp((-C + u[:, None] + v[None, :]) / eps)
    return float((pi * (C if C_prod is None else C_prod)).sum() / C.size)


def _random_problem(seed, m=6, q=5):
    rs = np.random.default_rng(seed)
    return rs.uniform(0, 1.5, (m, q)), rs.uniform(0.05, 1, m), rs.uniform(0.05, 1, q)


def test_sinkhorn_matches_numpy_jacobi():
    C, mu, nu = _random_problem(0)
    got = L.sinkhorn_emd(torch.from_numpy(C), torch.from_numpy(mu), torch.from_numpy(nu)).item()
    assert got == pytest.approx(_sinkhorn_ref(C, mu, nu), rel=1e-10)
    # the test can tell the update orders apart
    assert abs(got - _sinkhorn_ref(C, mu, nu, jacobi=False)) > 1e-6
    assert L.sinkhorn_emd(*map(torch.from_numpy, (C, mu, nu)), eps=0.3, iters=3).item() == (
        pytest.approx(_sinkhorn_ref(C, mu, nu, eps=0.3, iters=3), rel=1e-10))


def test_sinkhorn_batched_equals_single():
    probs = [_random_problem(s) for s in range(6)]
    C = torch.tensor(np.stack([p[0] for p in probs])).view(2, 3, 6, 5)
    mu = torch.tensor(np.stack([p[1] for p in probs])).view(2, 3, 6)
    nu = torch.tensor(np.stack([p[2] for p in probs])).view(2, 3, 5)
    got = L.sinkhorn_emd(C, mu, nu)
    assert got.shape == (2, 3)
    for s, p in enumerate(probs):
        assert got.view(-1)[s].item() == pytest.approx(_sinkhorn_ref(*p), rel=1e-10)


def test_sinkhorn_gradient_goes_through_pi_only():
    C, mu, nu = _random_problem(1, m=4, q=3)
    cost = torch.tensor(C, requires_grad=True)
    L.sinkhorn_emd(cost, torch.from_numpy(mu), torch.from_numpy(nu)).backward()
    # finite differences of C -> sum(pi(C) * C0) with the product's cost frozen at C0
    h = 1e-6
    for a, b in [(0, 0), (1, 2), (3, 1)]:
        cp, cm = C.copy(), C.copy()
        cp[a, b] += h
        cm[a, b] -= h
        fd = (_sinkhorn_ref(cp, mu, nu, C_prod=C) - _sinkhorn_ref(cm, mu, nu, C_prod=C)) / (2 * h)
        assert cost.grad[a, b].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------- dynamic crops
class ScriptedRng:
    """Stands in for a numpy Generator: returns scripted values and records the bounds asked."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def integers(self, low, high=None, endpoint=False):
        self.calls.append((low, high, endpoint))
        v = self.values.pop(0)
        assert low <= v <= (high if endpoint else high - 1)
        return v


def _bilinear_ac(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Bilinear resize with align_corners=True, explicit per output pixel: (C, h, w)."""
    c, h, w = img.shape
    out = np.zeros((c, oh, ow))
    for i in range(oh):
        y = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = min(int(math.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(ow):
            x = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = min(int(math.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            out[:, i, j] = ((1 - fy) * (1 - fx) * img[:, y0, x0] + (1 - fy) * fx * img[:, y0, x1]
                            + fy * (1 - fx) * img[:, y1, x0] + fy * fx * img[:, y1, x1])
    return out


def _block_mean4(img: np.ndarray) -> np.ndarray:
    c, h, w = img.shape
    out = np.zeros((c, h // 4, w // 4))
    for i in range(h // 4):
        for j in range(w // 4):
            out[:, i, j] = img[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(axis=(1, 2))
    return out


def test_dynamic_crops_small_case_by_hand():
    x1 = torch.rand(1, 2, 40, 40, generator=_gen(14), dtype=DT)
    x2 = torch.rand(1, 2, 40, 40, generator=_gen(15), dtype=DT)
    c1, c2 = torch.tensor([[2, 3, 30, 24]]), torch.tensor([[5, 1, 30, 24]])
    rng = ScriptedRng([12, 9, 8, 7])  # lh, lw, sh, sw
    (crops1, crops2), = L.dynamic_crops(x1, c1, x2, c2, rng)
    assert rng.calls == [(10, 15, True), (8, 12, True), (6, 12, True), (4, 9, True)]
    # tops {0, 8, 16} (24 + 12 > 30), lefts {0, 7, 14} (21 + 9 > 24); 12x9 -> 8x7, no pooling
    assert crops1.shape == (9, 2, 8, 7)
    a1 = x1[0].numpy()[:, 2:32, 3:27]
    for idx, (a, b) in enumerate([(a, b) for a in (0, 8, 16) for b in (0, 7, 14)]):
        want = _bilinear_ac(a1[:, a:a + 12, b:b + 9], 8, 7)
        np.testing.assert_allclose(crops1[idx].numpy(), want, rtol=1e-10, atol=1e-12)
    # quadrants: 15x12 at (0,0), (0,12), (15,0), (15,12), each 4x4-pooled to 3x3
    a2 = x2[0].numpy()[:, 5:35, 1:25]
    assert crops2.shape == (4, 2, 3, 3)
    for idx, (a, b) in enumerate([(0, 0), (0, 12), (15, 0), (15, 12)]):
        want = _block_mean4(a2[:, a:a + 15, b:b + 12])
        np.testing.assert_allclose(crops2[idx].numpy(), want, rtol=1e-12)


def test_dynamic_crops_pool_when_resized_above_28():
    x = torch.rand(1, 1, 100, 100, generator=_gen(16), dtype=DT)
    c = torch.tensor([[0, 0, 90, 90]])
    (crops1, _), = L.dynamic_crops(x, c, x, c, ScriptedRng([40, 36, 30, 20]))
    # tops {0, 30}, lefts {0, 20, 40}; 40x36 -> 30x20 (30 > 28) -> pooled to 7x5
    assert crops1.shape == (6, 1, 7, 5)
    for idx, (a, b) in enumerate([(a, b) for a in (0, 30) for b in (0, 20, 40)]):
        want = _block_mean4(_bilinear_ac(x[0].numpy()[:, a:a + 40, b:b + 36], 30, 20))
        np.testing.assert_allclose(crops1[idx].numpy(), want, rtol=1e-10)


def test_dynamic_crops_skips_and_discards():
    x = torch.rand(4, 1, 100, 100, generator=_gen(17))
    coords = torch.tensor([[0, 0, 14, 50], [0, 0, 16, 81], [0, 0, 15, 15], [0, 0, 16, 80]])
    # samples 0 (h < 15) and 1 (aspect > 5) draw nothing; sample 2 draws sh = 4 < 7: discarded;
    # sample 3 (aspect exactly 5) is kept
    rng = ScriptedRng([5, 5, 4, 5, 8, 26, 8, 26])
    out = L.dynamic_crops(x, coords, x, coords, rng)
    assert out[0] is None and out[1] is None and out[2] is None
    assert rng.calls[:4] == [(5, 7, True), (5, 7, True), (2, 5, True), (2, 5, True)]
    crops1, crops2 = out[3]
    assert rng.calls[4:] == [(5, 8, True), (26, 40, True), (4, 8, True), (13, 26, True)]
    # 8x26 windows at tops {0, 8} and lefts {0, 26, 52}, kept at 8x26 (no pooling)
    assert crops1.shape == (6, 1, 8, 26)
    torch.testing.assert_close(crops1[4], x[3, :, 8:16, 26:52])  # same-size resize: identity
    assert crops2.shape == (4, 1, 2, 10)  # 8x40 quadrants pooled 4x4


def test_dynamic_crops_redraws_small_windows():
    x = torch.rand(1, 1, 12, 12, generator=_gen(18))
    c = torch.tensor([[0, 0, 12, 12]])
    rng = ScriptedRng([4, 5, 5, 6, 3, 3])  # lh = 4 < 5 forces a redraw of both sizes
    (crops1, _), = L.dynamic_crops(x, c, x, c, rng, min_size=10, min_out=2)
    assert rng.calls == [(4, 6, True)] * 4 + [(2, 5, True), (3, 6, True)]
    assert crops1.shape == (9, 1, 3, 3)  # 5x6 windows, stride 3: tops and lefts {0, 3, 6}


def test_dynamic_crops_generator_is_reproducible_and_in_bounds():
    x = torch.rand(3, 2, 64, 64, generator=_gen(19))
    c = torch.tensor([[0, 0, 60, 50], [4, 0, 40, 64], [10, 10, 30, 20]])
    for seed in range(5):
        a = L.dynamic_crops(x, c, x, c, np.random.default_rng(seed))
        b = L.dynamic_crops(x, c, x, c, np.random.default_rng(seed))
        for pa, pb in zip(a, b):
            assert (pa is None) == (pb is None)
            if pa is not None:
                assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], pb[1])
                assert 1 <= pa[0].shape[2] <= 28 and 1 <= pa[0].shape[3] <= 28


# ----------------------------------------------------------------------------- EMD
def _emd_inputs(seed: int, n: int, size: int):
    raw = torch.rand(n, 21, size, size, generator=_gen(seed), dtype=DT).requires_grad_()
    return raw, F.normalize(raw, dim=1)


def _emd_ref(crops) -> float:
    """Explicit double loop over (view-1 crop, quadrant) pairs with the numpy Sinkhorn."""
    scores = []
    for entry in crops:
        if entry is None:
            continue
        xs = [t.detach().numpy().reshape(t.shape[0], -1) for t in entry[0]]
        ys = [t.detach().numpy().reshape(t.shape[0], -1) for t in entry[1]]
        best = math.inf
        for x in xs:
            for y in ys:
                C = 1 - x.T @ y
                mu = np.array([x[:, a] @ y.mean(axis=1) for a in range(x.shape[1])])
                nu = np.array([y[:, b] @ x.mean(axis=1) for b in range(y.shape[1])])
                best = min(best, _sinkhorn_ref(C, mu, nu))
        scores.append(best)
    return sum(scores) / len(scores)


def test_emd_loss_value_and_gradient():
    raw1, u1 = _emd_inputs(20, 3, 32)
    raw2, u2 = _emd_inputs(21, 3, 32)
    c1 = torch.tensor([[4, 0, 28, 30], [0, 0, 10, 32], [10, 2, 22, 20]])  # sample 1: h < 15
    c2 = torch.tensor([[0, 2, 28, 30], [22, 0, 10, 32], [0, 10, 22, 20]])
    ref = _emd_ref(L.dynamic_crops(u1, c1, u2, c2, np.random.default_rng(3)))
    loss = L.emd_loss(u1, u2, c1, c2, np.random.default_rng(3))
    assert loss.item() == pytest.approx(ref, rel=1e-9)
    loss.backward()
    assert raw1.grad.abs().sum() > 0
    assert raw2.grad is None  # view 2 is the detached target


def test_emd_loss_zero_when_no_valid_sample():
    _, u1 = _emd_inputs(22, 2, 32)
    _, u2 = _emd_inputs(23, 2, 32)
    c = torch.tensor([[0, 0, 10, 32], [0, 0, 32, 5]])
    loss = L.emd_loss(u1, u2, c, c, np.random.default_rng(0))
    assert loss.item() == 0.0 and loss.device == u1.device
    loss.backward()


# ----------------------------------------------------------------------------- mix losses
def _mix_inputs():
    P = torch.rand(2, 21, 3, 4, generator=_gen(24), dtype=DT)
    Y = torch.randint(0, 21, (2, 3, 4), generator=_gen(25))
    Y[0, 1, 2] = 255
    Y[1, 0, 0] = 255
    return P, Y


def _pixel_logp(P: np.ndarray, n: int, i: int, j: int, as_logits: bool) -> np.ndarray:
    v = P[n, :, i, j]
    if as_logits:
        return v - math.log(sum(math.exp(t) for t in v))
    return np.log(v + 1e-6)


def _mix_ref(P: np.ndarray, Y: np.ndarray, kind: str, as_logits: bool) -> float:
    n_all, ce_sum, n_valid, focal2, ce_all = 0, 0.0, 0, 0.0, 0.0
    for n in range(P.shape[0]):
        for i in range(P.shape[2]):
            for j in range(P.shape[3]):
                n_all += 1
                y = int(Y[n, i, j])
                if y == 255:
                    continue
                lp = _pixel_logp(P, n, i, j, as_logits)[y]
                ce_sum, n_valid = ce_sum - lp, n_valid + 1
                ce_all -= lp
                focal2 += -((1 - math.exp(lp)) ** 2) * lp
    return {"focal": ce_all / n_all, "ce": ce_sum / n_valid,
            "focal_ce": 2 * ce_sum / n_valid + focal2 / n_all}[kind]


@pytest.mark.parametrize("as_logits", [True, False])
@pytest.mark.parametrize("kind", ["focal", "ce", "focal_ce"])
def test_mix_seg_loss_matches_per_pixel(kind, as_logits):
    P, Y = _mix_inputs()
    P.requires_grad_()
    loss = L.mix_seg_loss(P, Y, kind, probs_as_logits=as_logits)
    ref = _mix_ref(P.detach().numpy(), Y.numpy(), kind, as_logits)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    assert P.grad.abs().sum() > 0


def test_mix_seg_loss_unknown_kind():
    P, Y = _mix_inputs()
    with pytest.raises(UserError):
        L.mix_seg_loss(P, Y, "Focal_loss")


def _overlap_ref(P: np.ndarray, Y: np.ndarray, as_logits: bool):
    inter = sum_q = sum_o = 0.0
    for n in range(P.shape[0]):
        for i in range(P.shape[2]):
            for j in range(P.shape[3]):
                v = P[n, :, i, j]
                q = np.exp(v) / np.exp(v).sum() if as_logits else v
                sum_q += q.sum()
                y = int(Y[n, i, j])
                if y != 255:  # ignored pixels have an all-zero one-hot row
                    inter += q[y]
                    sum_o += 1
    return inter, sum_q, sum_o


@pytest.mark.parametrize("as_logits", [True, False])
def test_soft_iou_and_dice_match_loops(as_logits):
    P, Y = _mix_inputs()
    inter, sq, so = _overlap_ref(P.numpy(), Y.numpy(), as_logits)
    iou = L.soft_iou_loss(P, Y, probs_as_logits=as_logits)
    dice = L.soft_dice_loss(P, Y, probs_as_logits=as_logits)
    assert iou.item() == pytest.approx(1 - (inter + 1) / (sq + so - inter + 1), rel=1e-12)
    assert dice.item() == pytest.approx(1 - (2 * inter + 1) / (sq + so + 1), rel=1e-12)


@pytest.mark.parametrize("as_logits", [True, False])
def test_soft_losses_read_81_classes_from_the_maps(as_logits):
    """COCO: P has 81 channels and Y labels up to 80; the one-hot width comes from P (a width of
    21 would drop every label above 20 as if ignored)."""
    P = torch.rand(2, 81, 3, 4, generator=_gen(27), dtype=DT)
    Y = torch.randint(0, 81, (2, 3, 4), generator=_gen(28))
    Y[0, 0, :3] = torch.tensor([80, 21, 255])
    inter, sq, so = _overlap_ref(P.numpy(), Y.numpy(), as_logits)
    iou = L.soft_iou_loss(P, Y, probs_as_logits=as_logits)
    dice = L.soft_dice_loss(P, Y, probs_as_logits=as_logits)
    assert iou.item() == pytest.approx(1 - (inter + 1) / (sq + so - inter + 1), rel=1e-12)
    assert dice.item() == pytest.approx(1 - (2 * inter + 1) / (sq + so + 1), rel=1e-12)
    assert torch.equal(iou, L.soft_iou_loss(P, Y, 81, probs_as_logits=as_logits))
    ce = L.mix_seg_loss(P, Y, "ce", probs_as_logits=as_logits)
    assert ce.item() == pytest.approx(_mix_ref(P.numpy(), Y.numpy(), "ce", as_logits), rel=1e-12)


def _sc_ref(P: np.ndarray, channels: list[set[int]], t: float) -> float:
    n_, c_, h, w = P.shape
    total = 0.0
    for n in range(n_):
        for c in channels[n]:
            for i in range(h):
                for j in range(w):
                    if j + 1 < w and abs(P[n, c, i, j + 1] - P[n, c, i, j]) > t:
                        total += abs(P[n, c, i, j + 1] - P[n, c, i, j])
                    if i + 1 < h and abs(P[n, c, i + 1, j] - P[n, c, i, j]) > t:
                        total += abs(P[n, c, i + 1, j] - P[n, c, i, j])
    return total / (n_ * c_ * h * w)


def test_spatial_continuity_released_and_fixed_masks():
    P = torch.rand(2, 21, 5, 6, generator=_gen(26), dtype=DT)
    mix = _multi_hot([[4, 11], [0]])
    released = L.spatial_continuity_loss(P, mix)
    fixed = L.spatial_continuity_loss(P, mix, released_mask=False)
    # Q4: channels {0, 1} for every sample; fix: background + present classes shifted by one
    assert released.item() == pytest.approx(_sc_ref(P.numpy(), [{0, 1}, {0, 1}], 0.3), rel=1e-12)
    assert fixed.item() == pytest.approx(_sc_ref(P.numpy(), [{0, 5, 12}, {0, 1}], 0.3), rel=1e-12)
    assert released.item() != pytest.approx(fixed.item())
    low = L.spatial_continuity_loss(P, mix, threshold=0.0, released_mask=False)
    assert low.item() == pytest.approx(_sc_ref(P.numpy(), [{0, 5, 12}, {0, 1}], 0.0), rel=1e-12)
