"""The dense CRF (tool/crf.py): the unary against pydensecrf, the reduced CRF against the
21-label one, the worker pool against the in-process loop. Small images: a few seconds."""
from __future__ import annotations

import pickle
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from pydensecrf.utils import unary_from_softmax

from tool.crf import (
    CRFParams,
    CRFPool,
    _build_crf,
    _infer,
    _LabelSet,
    crf_labels,
    crf_labels_full,
    dense_crf,
    kept_labels,
    softmax_unary,
)

T16 = 0.300048828125  # float16(0.30), the nearest half to 0.30 (Q21)


def crf_marginals(image: np.ndarray, maps: np.ndarray,
                  present: Sequence[int] | np.ndarray | None, p: CRFParams = CRFParams()
                  ) -> np.ndarray:
    """The reduced CRF's marginals spread back to all C ids: np (C, H, W) float32 (absent ids 0
    when dropped). With "merge" they equal ``dense_crf``'s up to float32 rounding; arguments as
    ``crf_labels``."""
    keep = kept_labels(present, maps)
    labels = _LabelSet(keep, maps.shape[0], p, maps.dtype)
    crf = _build_crf(image, labels.ids.size, p, labels.label_scale)
    q = labels.per_label(_infer(crf, labels.unary(np.ascontiguousarray(maps[keep])), p.n_iters,
                                maps.shape[1:]))
    out = np.zeros((labels.n_full, *q.shape[1:]), np.float32)
    out[keep] = q[: keep.size]
    if labels.merge:
        out[labels.missing] = q[-1]
    return out


def _scene(rng: np.random.Generator, classes: list[int], size: int = 72, n_classes: int = 21
           ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image with one coloured noisy rectangle per class, and float16 maps
    (n_classes, H, W): blurred, noisy, shifted versions of the rectangles; channel 0 = T16."""
    img = 100 + rng.normal(0, 12, (size, size, 3))
    maps = np.zeros((n_classes, size, size), np.float32)
    for c in classes:
        y0, x0 = rng.integers(0, size // 2, 2)
        hh, ww = rng.integers(size // 4, size // 2, 2)
        img[y0:y0 + hh, x0:x0 + ww] = rng.integers(0, 256, 3) + rng.normal(0, 12, (hh, ww, 3))
        box = np.zeros((size, size), np.float32)
        dy, dx = rng.integers(-4, 5, 2)
        box[max(y0 + dy, 0):y0 + dy + hh, max(x0 + dx, 0):x0 + dx + ww] = 1
        blob = cv2.GaussianBlur(box, (0, 0), size / 12) + rng.normal(0, 0.15, box.shape)
        maps[c] = np.clip(blob, 0, 1)
    maps[0] = T16
    return np.clip(img, 0, 255).astype(np.uint8), maps.astype(np.float16)


SCENES = [[5], [3, 15], [1, 12, 20]]


def test_unary_matches_pydensecrf():
    _, maps = _scene(np.random.default_rng(0), [3, 15], size=16)
    for m in (maps, maps.astype(np.float32)):
        assert np.array_equal(softmax_unary(m, 0.5), unary_from_softmax(m, scale=0.5))
        assert np.array_equal(softmax_unary(m, np.float64(0.5)), unary_from_softmax(m, scale=0.5))


def test_crf_labels_present_none_and_argument_checks():
    img, maps = _scene(np.random.default_rng(6), [4, 9], size=32)
    assert np.array_equal(crf_labels(img, maps, None), crf_labels(img, maps, [9, 4]))
    with pytest.raises(ValueError, match="absent"):
        CRFParams(absent="keep")
    with pytest.raises(TypeError):
        CRFParams(n_iter=5)  # a misspelt CRF parameter is not ignored
    with pytest.raises(TypeError):
        crf_labels(img, maps, [4], {"n_iters": 5})  # nor the dict of the former API
    with pytest.raises(ValueError):
        crf_labels(img, maps, [21])


def test_params_are_one_picklable_value():
    p = CRFParams(n_iters=3, reduced=True, absent="drop")
    assert pickle.loads(pickle.dumps(p)) == p  # shipped as is to the spawn workers
    assert hash(p) == hash(CRFParams(n_iters=3, reduced=True, absent="drop"))


def test_reduced_crf_matches_21_label_crf():
    rng = np.random.default_rng(1)
    agree, total = 0, 0
    for classes in SCENES:
        img, maps = _scene(rng, classes)
        q_full = dense_crf(img, maps)
        q_merge = crf_marginals(img, maps, classes)
        # merging the absent labels is exact: same marginals up to float32 rounding ...
        assert np.abs(q_merge - q_full).max() < 1e-4
        # ... while dropping them is not (so this comparison can fail)
        drop = crf_marginals(img, maps, classes, CRFParams(absent="drop"))
        assert np.abs(drop - q_full).max() > 1e-3
        full = crf_labels_full(img, maps)
        ours = crf_labels(img, maps, classes)
        assert set(np.unique(ours)) <= {0, *classes}
        agree += int((full == ours).sum())
        total += full.size
    print(f"reduced vs 21-label CRF pixel agreement: {agree / total:.6f}")
    assert agree / total >= 0.995


def test_reduced_crf_matches_81_label_crf():
    """COCO: 81 channels. The reduced CRF takes C = 81 from the maps (uniform (1 - s) / 81, 80 -
    P absent labels merged) and matches the brute-force 81-label CRF as the 21-label one does."""
    rng = np.random.default_rng(9)
    agree, total = 0, 0
    for classes in ([80], [7, 44], [1, 40, 79]):
        img, maps = _scene(rng, classes, size=48, n_classes=81)
        q_full = dense_crf(img, maps)
        assert q_full.shape == (81, 48, 48)
        keep = kept_labels(classes, maps)
        u = _LabelSet(keep, 81, CRFParams(), maps.dtype).unary(maps[keep])
        assert np.array_equal(u[:keep.size], softmax_unary(maps, 0.5)[keep])  # (1 - s) / 81
        q_merge = crf_marginals(img, maps, classes)
        assert np.abs(q_merge - q_full).max() < 1e-4
        full, ours = crf_labels_full(img, maps), crf_labels(img, maps, classes)
        assert set(np.unique(ours)) <= {0, *classes} and set(np.unique(full)) <= {0, *classes}
        assert classes[-1] in np.unique(ours)
        agree += int((full == ours).sum())
        total += full.size
        # the pool's jobs carry C: reduced and released maps of 81 channels as in training
        pooled = CRFPool(0).map(np.stack([img, img]), np.stack([maps, maps]),
                                [classes, None], CRFParams(reduced=True))
        assert np.array_equal(pooled[0], ours) and np.array_equal(pooled[1], ours)
        assert np.array_equal(CRFPool(0).map(img[None], maps[None])[0], full)
    assert agree / total >= 0.995


def test_pool_matches_in_process():
    rng = np.random.default_rng(5)
    scenes = [_scene(rng, c, size=48) for c in SCENES]
    images = np.stack([s[0] for s in scenes])
    maps = np.stack([s[1] for s in scenes])
    # the training layout: own maps, then the same images again with other (partner) maps
    partner_maps = maps.copy()
    partner_maps[:, 1:] = np.roll(partner_maps[:, 1:], 5, axis=-1)
    images2, maps2 = np.concatenate([images, images]), np.concatenate([maps, partner_maps])
    presents = SCENES + SCENES
    reduced = CRFParams(reduced=True)
    serial = CRFPool(0).map(images2, maps2, presents, reduced)
    with CRFPool(2) as pool:
        pool.warmup()
        parallel = pool.map(images2, maps2, presents, reduced)
        released = pool.map(images2, maps2)
    assert np.array_equal(parallel, serial)
    for i in range(len(images2)):
        assert np.array_equal(serial[i], crf_labels(images2[i], maps2[i], presents[i]))
        assert np.array_equal(released[i], crf_labels_full(images2[i], maps2[i]))
