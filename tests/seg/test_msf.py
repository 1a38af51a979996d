"""tool.seg.msf: scaled inputs, multi-scale + flip fusion, the released CRF, the label argmax."""
from __future__ import annotations

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from PIL import Image
from pydensecrf.utils import unary_from_softmax

import tool.seg.infer as infer
from data.voc import IMAGENET_MEAN, IMAGENET_STD
from tool.seg import msf
from tool.seg.msf import (
    CRF_PARAMS,
    crf_refine,
    crf_unary,
    load_rgb,
    msf_fuse,
    msf_predict,
    predict_label,
    scaled_inputs,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _bilinear_ref(m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Brute-force bilinear resize of (h, w, C), float64: half-pixel centres
    x_src = (x + 0.5) * in / out - 0.5, clamped to [0, in - 1], no antialias."""
    h, w = m.shape[:2]
    oh, ow = out_hw
    out = np.empty((oh, ow, m.shape[2]))
    for y in range(oh):
        sy = min(max((y + 0.5) * h / oh - 0.5, 0.0), h - 1.0)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(ow):
            sx = min(max((x + 0.5) * w / ow - 0.5, 0.0), w - 1.0)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * m[y0, x0] + fx * m[y0, x1]
            bottom = (1 - fx) * m[y1, x0] + fx * m[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


# ---------------------------------------------------------------- scaled_inputs

def test_public_home_reexports():
    for name in ("CRF_PARAMS", "crf_refine", "msf_fuse", "msf_predict", "predict_label",
                 "scaled_inputs"):
        assert getattr(infer, name) is getattr(msf, name)
        assert name in infer.__all__


def test_scaled_inputs_sizes_order_and_flip():
    img = Image.fromarray(_image(375, 500))  # H 375, W 500
    xs = scaled_inputs(img)
    assert len(xs) == 12
    # Python round, halves to even: 187.5 -> 188, 281.25 -> 281, 562.5 -> 562
    want_hw = [(188, 250), (281, 375), (375, 500), (469, 625), (562, 750), (656, 875)]
    assert [x.shape for x in xs] == [(3, *hw) for hw in want_hw for _ in range(2)]
    for k in range(6):
        assert xs[2 * k].dtype == np.float32 and xs[2 * k].flags["C_CONTIGUOUS"]
        assert np.array_equal(xs[2 * k + 1], xs[2 * k][:, :, ::-1])
    no_flip = scaled_inputs(img, scales=(0.5, 1.0), flip=False)
    assert len(no_flip) == 2
    assert np.array_equal(no_flip[0], xs[0]) and np.array_equal(no_flip[1], xs[4])


def test_scaled_inputs_values_match_numpy():
    img = Image.fromarray(_image(37, 50, seed=1))
    xs = scaled_inputs(img, scales=(0.75, 1.0, 1.5))
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    for k, s in enumerate((0.75, 1.0, 1.5)):
        size = (round(50 * s), round(37 * s))
        arr = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
        ref = ((arr / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)
        assert np.array_equal(xs[2 * k], ref)
        assert np.array_equal(xs[2 * k + 1], ref[:, :, ::-1])
    grey = scaled_inputs(img.convert("L"), scales=(1.0,), flip=False)[0]
    assert grey.shape == (3, 37, 50)
    with pytest.raises(ValueError):
        scaled_inputs(img, scales=())


# ---------------------------------------------------------------- msf_fuse

@pytest.mark.parametrize("n_ch", [21, 81, 1, 3, 130])
def test_msf_fuse_matches_bruteforce_bilinear(n_ch):
    rng = np.random.default_rng(n_ch)
    out_hw = (11, 14)
    # upscale, downscale, exact 2x downscale, identity, anisotropic
    sizes = [(6, 7), (6, 7), (17, 23), (22, 28), (11, 14), (9, 30)]
    flipped = [False, True, True, False, True, False]
    maps = [_softmax(rng.normal(0, 2, (*hw, n_ch)), axis=2).astype(np.float32) for hw in sizes]
    got = msf_fuse(maps, flipped, out_hw)
    assert got.shape == (n_ch, *out_hw) and got.dtype == np.float32
    ref = np.mean([_bilinear_ref(m.astype(np.float64), out_hw)[:, ::-1] if f
                   else _bilinear_ref(m.astype(np.float64), out_hw)
                   for m, f in zip(maps, flipped)], axis=0).transpose(2, 0, 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    if n_ch > 1:  # a mean of distributions is one
        np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_msf_fuse_flip_is_undone_after_resize():
    m = np.zeros((5, 8, 2), np.float32)
    m[:, :2, 0] = 1  # left strip in the flipped pass's frame = right strip of the image
    m[..., 1] = 1 - m[..., 0]
    got = msf_fuse([m], [True], (5, 8))
    assert np.array_equal(got[0], m[:, ::-1, 0])
    with pytest.raises(ValueError):
        msf_fuse([m, m], [True], (5, 8))
    with pytest.raises(ValueError):
        msf_fuse([], [], (5, 8))


# ---------------------------------------------------------------- msf_predict

class _StandIn(torch.nn.Module):
    """Deterministic stand-in SegNet: 1x1 conv logits plus a column ramp (not flip-symmetric),
    behind a dropout that only eval mode switches off; logits at input size."""

    def __init__(self, n_ch: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv2d(3, n_ch, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(n_ch, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(n_ch, generator=g))
        self.ramp = torch.linspace(-2, 2, n_ch)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        col = torch.arange(w, dtype=x.dtype, device=x.device) / w
        return self.drop(self.conv(x) + self.ramp.to(x.device)[:, None, None] * col)

    def numpy_logits(self, x: np.ndarray) -> np.ndarray:
        """(3, h, w) -> (C, h, w) float64, computed independently of torch."""
        wt = self.conv.weight.detach().double().numpy()[:, :, 0, 0]
        b = self.conv.bias.detach().double().numpy()
        col = np.arange(x.shape[-1]) / x.shape[-1]
        return (np.einsum("ck,khw->chw", wt, x.astype(np.float64)) + b[:, None, None]
                + self.ramp.double().numpy()[:, None, None] * col)


def _manual_msf(model: _StandIn, img: np.ndarray, scales, flip) -> np.ndarray:
    h, w = img.shape[:2]
    acc, n = 0.0, 0
    for i, x in enumerate(scaled_inputs(Image.fromarray(img), scales, flip)):
        p = _softmax(model.numpy_logits(x), axis=0).transpose(1, 2, 0).astype(np.float32)
        r = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        acc = acc + (r[:, ::-1] if flip and i % 2 else r)
        n += 1
    return (acc / n).transpose(2, 0, 1)


@pytest.mark.parametrize("flip", [True, False])
def test_msf_predict_equals_manual_fusion(flip):
    model = _StandIn().train()
    img = _image(30, 41, seed=2)
    got = msf_predict(model, img, flip=flip)
    assert got.shape == (5, 30, 41) and got.dtype == np.float32
    np.testing.assert_allclose(got, _manual_msf(model, img, msf.MSF_SCALES, flip), atol=2e-6)
    assert model.training  # mode restored
    one = msf_predict(model, img, scales=(1.0,), flip=False)
    x = scaled_inputs(Image.fromarray(img), (1.0,), False)[0]
    np.testing.assert_allclose(one, _softmax(model.numpy_logits(x), 0), atol=2e-6)


def test_msf_predict_81_channels():
    """COCO's 81 classes through the 12 passes: the fused map keeps every channel."""
    model = _StandIn(81)
    img = _image(21, 26, seed=7)
    got = msf_predict(model, img)
    assert got.shape == (81, 21, 26) and got.dtype == np.float32
    np.testing.assert_allclose(got, _manual_msf(model, img, msf.MSF_SCALES, True), atol=2e-6)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_msf_predict_cuda_matches_cpu():
    model = _StandIn()
    img = _image(30, 41, seed=4)
    cpu = msf_predict(model, img)
    gpu = msf_predict(model.cuda(), img, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)


# ---------------------------------------------------------------- CRF

def test_crf_params_are_the_released_effective_values():
    assert CRF_PARAMS["iters"] == 4 and msf.VAL_CRF_ITERS == 1
    assert CRF_PARAMS["scale_factor"] == 1.5 and CRF_PARAMS["confidence"] == 0.5
    assert CRF_PARAMS["gaussian"] == {"sxy": 2.0, "compat": 1}
    assert CRF_PARAMS["bilateral"]["sxy"] == pytest.approx(21.3333333)
    assert CRF_PARAMS["bilateral"]["srgb"] == 10 and CRF_PARAMS["bilateral"]["compat"] == 10


@pytest.mark.parametrize("n_ch", [21, 81])
def test_crf_unary_is_the_formula(n_ch):
    rng = np.random.default_rng(5)
    p = _softmax(rng.normal(0, 3, (n_ch, 7, 9)), axis=0).astype(np.float32)
    p[3, 0, 0] = 0.0
    u = crf_unary(p)
    assert u.shape == (n_ch, 63) and u.dtype == np.float32
    ref = -np.log(np.clip(0.5 * p.astype(np.float64) + 0.5 / n_ch, 1e-5, 1.0))
    np.testing.assert_allclose(u, ref.reshape(n_ch, -1).astype(np.float32), rtol=1e-7, atol=0)
    assert np.array_equal(u, unary_from_softmax(p, scale=0.5))  # pydensecrf's own
    assert np.array_equal(crf_unary(p, 0.8), unary_from_softmax(p, scale=0.8))


def _released_crf(img: np.ndarray, p: np.ndarray, t: int) -> np.ndarray:
    """The CRF as released, written out with pydensecrf's own calls."""
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, p.shape[0])
    d.setUnaryEnergy(unary_from_softmax(p, scale=0.5))
    d.addPairwiseGaussian(sxy=3 / 1.5, compat=1)
    d.addPairwiseBilateral(sxy=32 / 1.5, srgb=10, rgbim=np.ascontiguousarray(img), compat=10)
    return np.array(d.inference(t), dtype=np.float32).reshape(p.shape)


@pytest.mark.parametrize("n_ch", [21, 81])
def test_crf_refine_zero_iters_and_release_parity(n_ch):
    img = _image(20, 27, seed=6)
    p = _softmax(np.random.default_rng(6).normal(0, 2, (n_ch, 20, 27)), 0).astype(np.float32)
    q0 = crf_refine(img, p, n_iters=0)  # mean field not run: Q = exp(-U) normalised
    np.testing.assert_allclose(q0, _softmax(-crf_unary(p).reshape(p.shape), 0), atol=1e-6)
    np.testing.assert_allclose(q0, 0.5 * p + 0.5 / n_ch, atol=1e-6)  # = the softened P
    for t in (1, 4):
        assert np.array_equal(crf_refine(img, p, n_iters=t), _released_crf(img, p, t))


def test_crf_refine_snaps_to_colour_edges():
    rng = np.random.default_rng(0)
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    truth = ((yy - 24) ** 2 + (xx - 30) ** 2 < 15 ** 2).astype(int)
    truth[xx > 50] = 2
    colours = np.array([[20, 120, 30], [200, 40, 40], [40, 40, 200]], np.float64)
    img = np.clip(colours[truth] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    # the network's guess: boundaries 4 px off, blurred, noisy
    guess = ((yy - 24) ** 2 + (xx - 34) ** 2 < 15 ** 2).astype(int)
    guess[xx > 46] = 2
    onehot = np.eye(21)[guess].transpose(2, 0, 1)
    logits = 3 * np.stack([cv2.GaussianBlur(o, (0, 0), 2) for o in onehot])
    p = _softmax(logits + rng.normal(0, 1, logits.shape), 0).astype(np.float32)
    q = crf_refine(img, p)
    assert q.shape == p.shape and q.dtype == np.float32 and (q >= 0).all()
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    raw_err = (predict_label(p) != truth).mean()
    crf_err = (predict_label(q) != truth).mean()
    assert raw_err > 0.1 and crf_err < 0.02, (raw_err, crf_err)


def test_crf_refine_input_checks_and_load_rgb(tmp_path):
    p = np.full((21, 6, 7), 1 / 21, np.float32)
    with pytest.raises(ValueError):
        crf_refine(np.zeros((6, 7), np.uint8), p)  # grey image: load with load_rgb
    with pytest.raises(ValueError):
        crf_refine(np.zeros((6, 8, 3), np.uint8), p)
    grey = tmp_path / "g.jpg"
    Image.fromarray(np.arange(42, dtype=np.uint8).reshape(6, 7) * 5).save(grey)
    rgb = load_rgb(grey)  # METHOD.md 14.8 S24: converted, not a crash
    assert rgb.shape == (6, 7, 3) and rgb.dtype == np.uint8 and rgb.flags["C_CONTIGUOUS"]
    assert crf_refine(rgb, p).shape == p.shape


# ---------------------------------------------------------------- predict_label

def test_predict_label_ties_to_lowest_index():
    p = np.zeros((4, 2, 3), np.float32)
    p[:, 0, 0] = 0.25  # all tied -> 0
    p[2:, 0, 1] = 0.5  # 2 and 3 tied -> 2
    p[1, 0, 2] = p[3, 0, 2] = 0.5
    p[3, 1, :] = 1.0
    lab = predict_label(p)
    assert lab.dtype == np.uint8 and lab.shape == (2, 3)
    assert lab.tolist() == [[0, 2, 1], [3, 3, 3]]
