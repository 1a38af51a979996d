"""Dense CRF (pydensecrf ``DenseCRF2D``) for pseudo labels (METHOD.md 5.5 step 4) and inference.

Two ways to run it:

- released style: all C labels (``dense_crf`` / ``crf_labels_full``);
- reduced: background + the present classes only (``crf_labels``).

C is the maps' channel count, never a constant: num_classes, 21 on VOC, 81 on COCO (label ids
0..C-1 come back as uint8). Every entry point takes one ``CRFParams`` (the CRF settings and how
to run it).

Why the reduced CRF decides as the C-label one does: classes absent from the image-level label
have all-zero maps, hence the same constant unary -log((1 - s) / C) at every pixel and the same
Potts messages, so their marginals stay equal to each other during mean field. By induction they
never exceed the background's (its unary is lower everywhere as long as T > 0 and the filters
are linear with non-negative weights), so they never win - but their mass is part of every
per-pixel normaliser. ``CRFParams.absent="merge"`` (default) therefore replaces the m = C - 1 - P
absent labels (P present) by ONE aggregate label with unary u_abs - log(m) and Potts weights
w / m: it carries exactly their total mass, so every normaliser, hence every kept marginal,
equals the C-label CRF's up to float32 rounding. None of this depends on C: it only needs the
reduced CRF to use the full C in the uniform term (1 - s) / C, which it reads from the maps
(``n_full``, carried by the pool's jobs), and m to count every absent id (79 of 81 for a COCO
image of one class). ``absent="drop"`` removes them outright: the kept marginals then
grow by a per-pixel factor, the messages shift and about 1 % of the pixels can change
(tool.dev.bench_crf).

``crf_from_labels`` is the other CRF, of a hard label map (IRN's IR labels, METHOD.md 13.2.3).

``CRFPool`` runs a batch of images in worker processes (created once, reused across calls) that
exit when the process that owns the pool dies, even by SIGKILL.
"""
from __future__ import annotations

import math
from argparse import Namespace
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from tool.common.workers import shutdown_pool, worker_pool

ABSENT_MODES = ("merge", "drop")


@dataclass(frozen=True)
class CRFParams:
    """The dense-CRF settings of METHOD.md 5.5 step 4 / section 9, as one immutable object.

    Built once per run (``from_config``) and passed as is down to the worker processes
    (picklable). The defaults are the released values (D2), the only place besides
    configs/base.yaml where they are written. ``reduced`` and ``absent`` say how to run the CRF,
    not which CRF: reduced=False is the released C-label CRF; reduced=True keeps background +
    the present classes, with the absent ones merged into one label ("merge", exact) or dropped
    ("drop"), METHOD.md 5.5 step 4 "Ours".
    """

    n_iters: int = 6
    unary_scale: float = 0.5
    gauss_sxy: float = 3 / 1.5
    gauss_compat: float = 1.0
    bi_sxy: float = 32 / 1.5
    bi_srgb: float = 10.0
    bi_compat: float = 10.0
    reduced: bool = False
    absent: str = "merge"

    def __post_init__(self) -> None:
        if self.absent not in ABSENT_MODES:
            raise ValueError(f"CRFParams.absent must be one of {ABSENT_MODES}, "
                             f"got {self.absent!r}")

    @classmethod
    def from_config(cls, args: Namespace) -> CRFParams:
        """From a resolved config's ``crf_iters``, ``crf_unary_scale``, ..., ``crf_reduced``,
        ``crf_absent`` (the ``plmix`` section of configs/base.yaml)."""
        return cls(n_iters=int(args.crf_iters), unary_scale=float(args.crf_unary_scale),
                   gauss_sxy=float(args.crf_gauss_sxy), gauss_compat=float(args.crf_gauss_compat),
                   bi_sxy=float(args.crf_bi_sxy), bi_srgb=float(args.crf_bi_srgb),
                   bi_compat=float(args.crf_bi_compat), reduced=bool(args.crf_reduced),
                   absent=str(args.crf_absent))


def softmax_unary(probs: np.ndarray, scale: float, n_labels: int | None = None,
                  clip: float = 1e-5) -> np.ndarray:
    """-log(clip(scale * p + (1 - scale) / n_labels, clip, 1)): np (C, H, W) -> np (C, H*W) f32.

    With ``n_labels = C`` (default) this is bit-identical to pydensecrf's
    ``unary_from_softmax(probs, scale)``: ``scale * p`` stays in the input dtype (float16 for the
    pseudo-label maps, Q21; a Python float never upcasts it) and the uniform term is added in
    float64.
    """
    n = probs.shape[0] if n_labels is None else n_labels
    uniform = (1 - scale) * (1.0 / n)
    p = (float(scale) * probs).astype(np.float64) + uniform
    return -np.log(np.clip(p, clip, 1.0)).reshape(probs.shape[0], -1).astype(np.float32)


def _compat(weight: float, label_scale: np.ndarray | None) -> float | np.ndarray:
    """Potts weight w, or a diagonal compatibility -w * label_scale (densecrf's Potts(w) is
    the diagonal -w, so label_scale = 1 everywhere gives the same model)."""
    if label_scale is None:
        return float(weight)
    return np.ascontiguousarray(-weight * label_scale, dtype=np.float32)


def _build_crf(image: np.ndarray, n_labels: int, p: CRFParams,
               label_scale: np.ndarray | None = None) -> dcrf.DenseCRF2D:
    """DenseCRF2D with both pairwise terms for image (H, W, 3) uint8. The lattices are built
    here; one object can then run several unaries (bit-identical to fresh objects)."""
    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.addPairwiseGaussian(sxy=p.gauss_sxy, compat=_compat(p.gauss_compat, label_scale))
    crf.addPairwiseBilateral(sxy=p.bi_sxy, srgb=p.bi_srgb,
                             rgbim=np.require(image, np.uint8, ["C", "W"]),  # Cython wants writable
                             compat=_compat(p.bi_compat, label_scale))
    return crf


def _infer(crf: dcrf.DenseCRF2D, unary: np.ndarray, n_iters: int, hw: tuple[int, int]
           ) -> np.ndarray:
    """Mean field from unary (L, H*W) -> Q np (L, H, W) float32."""
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    return np.asarray(crf.inference(n_iters), dtype=np.float32).reshape(unary.shape[0], *hw)


def dense_crf(image_hwc_uint8: np.ndarray, probs_chw: np.ndarray,
              params: CRFParams = CRFParams()) -> np.ndarray:
    """Released-style CRF over all C labels given: image (H, W, 3) uint8, probs (C, H, W)
    (not necessarily a distribution) -> Q np (C, H, W) float32. ``params.reduced`` and
    ``params.absent`` are not read."""
    crf = _build_crf(image_hwc_uint8, probs_chw.shape[0], params)
    return _infer(crf, softmax_unary(probs_chw, params.unary_scale), params.n_iters,
                  probs_chw.shape[1:])


def crf_from_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams,
                    gt_prob: float = 0.7) -> np.ndarray:
    """The CRF of a hard label map (IRN's, METHOD.md 13.2.3), not of a softmax: Q np (L, H, W).

    image (H, W, 3) uint8; labels (H, W) ints in 0..n_labels-1, every value an ordinary label
    (pydensecrf's ``unary_from_labels`` with zero_unsure=False: -log(gt_prob) for the given
    label, -log((1 - gt_prob) / (n_labels - 1)) for each other one). Only the pairwise
    settings and ``n_iters`` of ``params`` are read. n_labels >= 2.
    """
    if n_labels < 2:
        raise ValueError(f"a label CRF needs n_labels >= 2, got {n_labels}")
    unary = unary_from_labels(np.asarray(labels), n_labels, gt_prob=gt_prob, zero_unsure=False)
    crf = _build_crf(image, n_labels, params)
    return _infer(crf, unary, params.n_iters, labels.shape)


def crf_labels_full(image: np.ndarray, maps: np.ndarray,
                    params: CRFParams = CRFParams()) -> np.ndarray:
    """Released path: argmax (ties -> lowest id) of the CRF over all C = maps.shape[0] labels
    -> np (H, W) uint8."""
    return dense_crf(image, maps, params).argmax(0).astype(np.uint8)


def kept_labels(present: Sequence[int] | np.ndarray | None, maps: np.ndarray) -> np.ndarray:
    """Background + present class ids, sorted and unique -> np int64.

    ``present=None`` keeps every channel that is non-zero somewhere; an all-zero channel is
    exactly an absent label for the CRF, so merging it is exact either way.
    """
    if present is None:
        present = np.flatnonzero(maps.reshape(maps.shape[0], -1).max(axis=1) != 0)
    ids = np.unique(np.concatenate([[0], np.asarray(present, dtype=np.int64).ravel()]))
    if ids[-1] >= maps.shape[0] or ids[0] < 0:
        raise ValueError(f"present ids {ids.tolist()} out of range for {maps.shape[0]} maps")
    return ids


class _LabelSet:
    """The labels a reduced CRF runs over: the kept ids, plus (absent="merge") one aggregate
    for the m absent ids with unary u_abs - log(m) and Potts weights scaled by 1/m."""

    def __init__(self, keep: np.ndarray, n_full: int, p: CRFParams, dtype: np.dtype) -> None:
        self.keep, self.n_full, self.scale_u = keep, n_full, p.unary_scale
        self.missing = np.setdiff1d(np.arange(n_full), keep)
        self.merge = bool(self.missing.size) and p.absent == "merge"
        self.ids, self.label_scale = keep, None
        if self.merge:
            m = self.missing.size
            u_abs = softmax_unary(np.zeros((1, 1, 1), dtype), self.scale_u, n_full)[0, 0]
            self.agg_unary = float(u_abs) - math.log(m)
            self.label_scale = np.append(np.ones(keep.size, np.float32), np.float32(1.0 / m))
            # the aggregate stands for the lowest absent id, so ties resolve to the lowest id
            # exactly as the C-label argmax does
            self.ids = np.append(keep, self.missing[0])
        self.order = np.argsort(self.ids, kind="stable")

    def unary(self, sub_map: np.ndarray) -> np.ndarray:
        """sub_map (K, H, W) kept channels -> (L, H*W) float32."""
        u = softmax_unary(sub_map, self.scale_u, n_labels=self.n_full)  # uniform stays (1-s)/C
        if not self.merge:
            return u
        return np.concatenate([u, np.full((1, u.shape[1]), self.agg_unary, np.float32)])

    def per_label(self, q: np.ndarray) -> np.ndarray:
        """Q of the CRF labels -> marginals per kept id (+ ONE absent id), in place."""
        if self.merge:
            q[-1] /= self.missing.size
        return q

    def decide(self, q: np.ndarray) -> np.ndarray:
        """Per-label marginals (L, H, W) -> ids np (H, W) uint8, ties to the lowest id."""
        return self.ids[self.order][q[self.order].argmax(0)].astype(np.uint8)


def _crf_group(image: np.ndarray, maps: np.ndarray, keep: np.ndarray | None, n_full: int,
               p: CRFParams) -> np.ndarray:
    """Several maps over ONE image (own and partner maps share images): one lattice and one
    joint mean field for all of them (``_infer_stacked``). maps (G, K, H, W) hold the kept
    channels only (keep None: all n_full, the released path) -> np (G, H, W) uint8 label ids."""
    labels = _LabelSet(np.arange(n_full) if keep is None else keep, n_full, p, maps.dtype)
    g = len(maps)
    scale = None if labels.label_scale is None else np.tile(labels.label_scale, g)
    crf = _build_crf(image, g * labels.ids.size, p, scale)
    unaries = np.stack([labels.unary(mp) for mp in maps])
    q = _infer_stacked(crf, unaries, p.n_iters, maps.shape[2:])
    return np.stack([labels.decide(labels.per_label(qg)) for qg in q])


def _infer_stacked(crf: dcrf.DenseCRF2D, unaries: np.ndarray, n_iters: int,
                   hw: tuple[int, int]) -> np.ndarray:
    """G independent mean fields of L labels each, run as one CRF of G*L labels.

    The pairwise terms are diagonal (Potts), so every label's message depends on its own Q only
    and the lattice filters all G*L channels in one pass (its fixed cost is paid once, not G
    times). The only coupling is densecrf's per-pixel normalisation over all G*L labels, which
    scales each block by a per-pixel constant; renormalising every block after each step (on
    densecrf's own Q buffer) gives each problem's mean field, up to float rounding.
    unaries (G, L, H*W) -> Q np (G, L, H, W) float32.
    """
    g, n_lab, n = unaries.shape
    crf.setUnaryEnergy(np.ascontiguousarray(unaries.reshape(g * n_lab, n), dtype=np.float32))
    q_mat, tmp1, tmp2 = crf.startInference()
    q = np.asarray(q_mat)  # a writable view of densecrf's (G*L, N) column-major Q
    blocks = q.reshape((n_lab, g, n), order="F") if g > 1 else None
    for it in range(n_iters + 1):
        if it:
            crf.stepInference(q_mat, tmp1, tmp2)
        if blocks is not None:
            blocks /= blocks.sum(axis=0, keepdims=True)
    return np.array(q, dtype=np.float32).reshape(g, n_lab, *hw)


def crf_labels(image: np.ndarray, maps: np.ndarray,
               present: Sequence[int] | np.ndarray | None,
               params: CRFParams = CRFParams()) -> np.ndarray:
    """CRF over background + present classes only, result mapped back to ids 0..C-1.

    image (H, W, 3) uint8; maps (C, H, W), C = num_classes (21 VOC, 81 COCO), channel 0 =
    background; present: foreground ids in 1..C-1 (None: the non-zero channels). Channels
    outside ``present`` are taken as zero (they are in the released maps) and not read.
    Always the reduced CRF (METHOD.md 6 uses it for inference whatever ``crf_reduced`` says):
    ``params.reduced`` is not read. Returns np (H, W) uint8.
    """
    _check_params(params)
    keep = kept_labels(present, maps)
    sub = np.ascontiguousarray(maps[keep])[None]
    return _crf_group(image, sub, keep, maps.shape[0], params)[0]


def _check_params(params: CRFParams) -> None:
    # a dict or keyword arguments of the former API would otherwise fail deep inside a worker
    if not isinstance(params, CRFParams):
        raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")


def _group_jobs(images: np.ndarray, maps: np.ndarray,
                presents: Sequence[Sequence[int] | None] | None, params: CRFParams
                ) -> tuple[list[list[int]], list[tuple]]:
    """``CRFPool.map``'s work: the indices of each group of maps sharing an identical image
    and label set, and one ``_crf_group`` argument tuple per group (copies of the inputs)."""
    groups: dict[tuple[bytes, tuple[int, ...] | None], list[int]] = {}
    keeps: list[np.ndarray | None] = []
    for i in range(len(images)):
        keep = None
        if params.reduced:
            keep = kept_labels(None if presents is None else presents[i], maps[i])
        keeps.append(keep)
        key = (np.ascontiguousarray(images[i]).tobytes(), None if keep is None else tuple(keep))
        groups.setdefault(key, []).append(i)
    jobs = []
    for idx in groups.values():
        keep = keeps[idx[0]]
        sub = maps[idx] if keep is None else maps[np.ix_(idx, keep)]  # fancy indexing: a copy
        jobs.append((np.array(images[idx[0]], order="C"), np.ascontiguousarray(sub), keep,
                     maps.shape[1], params))
    return list(groups.values()), jobs


def _done(value: np.ndarray) -> Future:
    """A finished future holding ``value`` (a job run in this process)."""
    f: Future = Future()
    f.set_result(value)
    return f


@contextmanager
def _pool_errors(workers: int) -> Iterator[None]:
    """A broken pool (a worker died), at submission or at a result, as one clear error."""
    try:
        yield
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"CRF pool: a worker process died (killed, e.g. out of memory?); the pool "
            f"of {workers} workers is unusable (crf_workers: 0 runs in-process)"
        ) from e


class CRFBatch:
    """A ``CRFPool.map_async`` call: its jobs, running in the pool or already done.

    ``result()`` waits for every job and assembles np (N, H, W) uint8, exactly
    ``CRFPool.map``'s return value; a dead worker is the same RuntimeError as there.
    """

    def __init__(self, groups: list[list[int]], parts: list[Future], shape: tuple[int, ...],
                 workers: int) -> None:
        self._groups, self._parts, self._shape, self._workers = groups, parts, shape, workers
        self._out: np.ndarray | None = None

    def done(self) -> bool:
        """True when every job has finished (``result()`` will not wait)."""
        return all(p.done() for p in self._parts)

    def result(self) -> np.ndarray:
        """The labels np (N, H, W) uint8, in the order of the images given (cached)."""
        if self._out is None:
            out = np.empty(self._shape, dtype=np.uint8)
            with _pool_errors(self._workers):
                for idx, part in zip(self._groups, self._parts):
                    out[idx] = part.result()
            self._out = out
        return self._out


class CRFPool:
    """Batch CRF, image by image, in ``workers`` processes (0 or 1: in this process).

    The executor is created once and reused by every call; use as a context manager or call
    ``close()``. ``mp_context`` defaults to "spawn" so workers inherit no CUDA/OpenMP state from a
    training process (the main script must then be import-safe: ``if __name__ == "__main__"``).
    Workers exit when this process dies, however it dies (``tool.common.workers``); create and
    first use the pool in a thread that lives as long as the pool (the main thread).
    """

    def __init__(self, workers: int = 0, mp_context: str = "spawn") -> None:
        self.workers = int(workers)
        self._ex = None
        if self.workers > 1:
            self._ex = worker_pool(self.workers, mp_context)

    def map(self, images: np.ndarray, maps: np.ndarray,
            presents: Sequence[Sequence[int] | None] | None = None,
            params: CRFParams = CRFParams()) -> np.ndarray:
        """images np (N, H, W, 3) uint8, maps np (N, C, H, W) (e.g. float16) -> np (N, H, W) uint8.

        params.reduced=False: the CRF over all C labels. params.reduced=True: background +
        presents[i] (None, or an entry None: the non-zero channels); every job carries C for
        the uniform unary term. Maps that share an identical image and label set run on one
        CRF object (one lattice build): the training batch holds every image twice, once with
        its own map and once as a partner.
        """
        return self.map_async(images, maps, presents, params).result()

    def map_async(self, images: np.ndarray, maps: np.ndarray,
                  presents: Sequence[Sequence[int] | None] | None = None,
                  params: CRFParams = CRFParams()) -> CRFBatch:
        """``map`` started, not waited for: ``.result()`` of the returned handle is exactly what
        ``map`` returns (the same jobs, sent in the same order), so the caller can work while
        the workers run (the overlapped training step, METHOD.md 5.4.1). With 0 or 1 workers
        the CRF runs here, before this returns. The jobs own copies of their inputs."""
        _check_params(params)
        groups, jobs = _group_jobs(images, maps, presents, params)
        shape = (len(images), *maps.shape[2:])
        if self._ex is None:
            return CRFBatch(groups, [_done(_crf_group(*job)) for job in jobs], shape,
                            self.workers)
        # longest jobs first (cost ~ maps x labels), so the workers finish together
        order = sorted(range(len(jobs)), key=lambda j: -jobs[j][1].shape[0] * (
            jobs[j][1].shape[1] + 2))
        futures: dict[int, Future] = {}
        with _pool_errors(self.workers):
            for j in order:
                futures[j] = self._ex.submit(_crf_group, *jobs[j])
        return CRFBatch(groups, [futures[j] for j in range(len(jobs))], shape, self.workers)

    def warmup(self, size: int = 16) -> None:
        """Start every worker and import the CRF there, so timing excludes process start-up."""
        if self._ex is None:
            return
        # distinct images, so that they are not grouped into one job
        img = np.arange(self.workers, dtype=np.uint8)[:, None, None, None]
        img = np.broadcast_to(img, (self.workers, size, size, 3))
        self.map(img, np.zeros((self.workers, 2, size, size), np.float32))

    def close(self) -> None:
        """Stop the workers: queued jobs are cancelled, running ones finished. Idempotent.

        The executor is detached first, so a second call (``__exit__`` after a handler, or at
        interpreter shutdown) does nothing. A signal handler should raise (SystemExit,
        KeyboardInterrupt) and let the ``with`` block close the pool rather than call this
        itself: the executor's shutdown takes a lock that an interrupted ``map`` may hold.
        """
        ex, self._ex = self._ex, None
        if ex is not None:
            shutdown_pool(ex)

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
