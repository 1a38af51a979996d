"""Paired comparison of two prediction folders on the same images and GT (``eval_cam.py
--compare``): is method A better than method B, beyond image-to-image noise?

Two complementary numbers, both on the same per-image confusion matrices (tool/eval/evaluation.py
semantics: npy dicts at one background threshold per folder, png label maps as they are):

* paired t-test on a per-image score, as the released ``t_statistic.py`` does (scipy
  ``ttest_rel``). The score of an image is its own mIoU: the mean over all C classes of
  IoU_c = TP_c / (T_c + P_c - TP_c + 1e-10) counted on that image alone, so a class absent from
  both its GT and its prediction contributes 0 (the release's definition, not a "present classes
  only" mean). Scores are in percent here (the release uses fractions; t and p are the same).
* bootstrap 95% percentile interval of the *dataset* mIoU difference A - B (the number papers
  report): images resampled with replacement, each resample's confusions summed, both mIoUs
  recomputed. Resamples are count weights (B, n) contracted with the stacked per-image
  (TP, T, P) counts (3C numbers an image; the confusions themselves are never stacked by
  ``compare_folders``: all of COCO val takes 78 MB a folder, not 2.1 GB) in chunks, so no
  Python loop runs per resample and memory stays bounded.

    from tool.eval import paired
    res = paired.compare_folders(names, "out_a", "out_b", "VOC2012/SegmentationClass",
                                 kind="npy", t_a=0.30, t_b=0.25)  # num_classes=81: COCO
    res.to_json()  # {"n", "mean_diff", "t", "p_value", "ci95", "miou_a", "miou_b", ...}
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.voc import NUM_CLASSES
from tool.common.errors import UserError
from tool.eval import evaluation as ev
from tool.eval.report import format_t

DEFAULT_RESAMPLES = 2000
BOOT_CHUNK = 256  # resamples per contraction: (256, n) weights, ~22 MB for 10582 images


# ---------------------------------------------------------------- per-image confusions


def _confusion_stack(job: tuple) -> np.ndarray:
    """Per-image confusions of one chunk of names: (k, C, C|C + 1) int64, in list order."""
    names, predict_dir, gt_dir, kind, thresholds, num_classes = job
    return np.stack([ev.confusion_file(name, predict_dir, gt_dir, kind, thresholds,
                                       num_classes=num_classes)[0] for name in names])


def _count_stack(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (TP, T, P) counts of one chunk, (k, 3, C) int64 in list order, and the chunk's
    summed confusion (C, C|C + 1): 3C numbers an image instead of C(C + 1) (COCO: 27x less)."""
    conf = _confusion_stack(job)
    return ev.confusion_counts(conf), conf.sum(axis=0)


def _check_inputs(names: Sequence[str], predict_dir: str | os.PathLike,
                  gt_dir: str | os.PathLike, kind: str, t: float | None) -> None:
    """One-line UserErrors for what can be checked before reading any file."""
    if kind not in ("npy", "png"):
        raise UserError(f"--type must be npy or png, got {kind!r}")
    if not names:
        raise UserError("no images to compare (empty list)")
    for what, folder in (("prediction folder", predict_dir), ("ground-truth folder", gt_dir)):
        if not Path(folder).is_dir():
            raise UserError(f"{what} not found: {folder}")
    if kind == "npy" and (t is None or not math.isfinite(float(t))):
        raise UserError(f"--type npy needs a finite background threshold for {predict_dir}, "
                        f"got {t}")


def _chunk_jobs(names: list[str], predict_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                kind: str, t: float | None, num_workers: int | None,
                num_classes: int) -> tuple[list[tuple], int]:
    """Checked inputs split into in-order chunks (as evaluation.accumulate), and the workers."""
    _check_inputs(names, predict_dir, gt_dir, kind, t)
    ev.check_num_classes(num_classes)  # a bad count fails before any file is read
    thr = None if kind == "png" else np.array([float(t)], np.float64)
    workers = ev.default_num_workers() if num_workers is None else int(num_workers)
    workers = min(max(workers, 1), len(names))
    n_chunks = min(len(names), workers * 4)
    bounds = np.linspace(0, len(names), n_chunks + 1).astype(int)
    return [(names[a:b], predict_dir, gt_dir, kind, thr, num_classes)
            for a, b in zip(bounds[:-1], bounds[1:])], workers


def _map_chunks(func, jobs: list[tuple], workers: int) -> list:
    """``func`` over the chunks in order (imap, not summed): here or in ``workers`` processes."""
    return [func(job) for job in jobs] if workers == 1 else ev.pool_map(func, jobs, workers)


def per_image_confusions(names: Sequence[str], predict_dir: str | os.PathLike,
                         gt_dir: str | os.PathLike, kind: str = "npy", t: float | None = None,
                         num_workers: int | None = None, *,
                         num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion of every ``<predict_dir>/<name>.<kind>`` against ``<gt_dir>/<name>.png``.

    kind npy needs the background threshold t (one per folder); png ignores it. Returns int64
    (n, C, C) for npy or (n, C, C + 1) for png (extra no-class column, see
    tool/eval/evaluation.py), C = num_classes (21 VOC, 81 COCO), in the order of ``names``.
    num_workers: processes (default min(8, cpus); 0 or 1 = here).
    File errors are UserErrors naming the file, raised in the caller even from a worker.
    For many images prefer :func:`per_image_counts` (all of COCO val: 2.1 GB here, 78 MB there).
    """
    jobs, workers = _chunk_jobs(list(names), predict_dir, gt_dir, kind, t, num_workers,
                                num_classes)
    return np.concatenate(_map_chunks(_confusion_stack, jobs, workers))


def per_image_counts(names: Sequence[str], predict_dir: str | os.PathLike,
                     gt_dir: str | os.PathLike, kind: str = "npy", t: float | None = None,
                     num_workers: int | None = None, *, num_classes: int = NUM_CLASSES
                     ) -> tuple[np.ndarray, np.ndarray]:
    """What the paired comparison needs of :func:`per_image_confusions`, in bounded memory:
    the per-image (TP, T, P) counts (n, 3, C) int64 (:func:`ev.confusion_counts`) in the
    order of ``names``, and the summed confusion (C, C|C + 1) of all images."""
    jobs, workers = _chunk_jobs(list(names), predict_dir, gt_dir, kind, t, num_workers,
                                num_classes)
    parts = _map_chunks(_count_stack, jobs, workers)
    return np.concatenate([c for c, _ in parts]), sum(total for _, total in parts)


# ---------------------------------------------------------------- scores


def per_image_miou(conf: np.ndarray) -> np.ndarray:
    """Per-image score of the released t_statistic.py, in percent: (n, C, C|C + 1) -> (n,).

    The mean over all C classes of the image's own IoU_c, so classes absent from both the GT
    and the prediction of that image count as 0.
    """
    return _miou_rows(conf)


def _miou_rows(conf: np.ndarray) -> np.ndarray:
    """Dataset mIoU in percent of each stacked matrix: (..., C, C|C + 1) -> (...)."""
    return _miou_of_counts(ev.confusion_counts(conf))


def _miou_of_counts(counts: np.ndarray) -> np.ndarray:
    """Dataset mIoU in percent of stacked (TP, T, P) counts: (..., 3, C) -> (...)."""
    return ev.iou_from_counts(counts).mean(axis=-1) * 100


def bootstrap_weights(n: int, resamples: int, seed: int = 0,
                      chunk: int = BOOT_CHUNK) -> Iterator[np.ndarray]:
    """Bootstrap count weights, yielded in blocks of int64 (<= chunk, n).

    Row r says how often each image is drawn in resample r (n draws with replacement, rows sum
    to n). Blocks come from one numpy Generator(seed) in order, so the weights are a function
    of (n, resamples, seed, chunk) only.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        # one bincount for the whole block: row r's draws land in bins r*n .. r*n + n - 1
        flat = (idx + np.arange(b)[:, None] * n).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n)


def bootstrap_miou_diffs(conf_a: np.ndarray, conf_b: np.ndarray,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         chunk: int = BOOT_CHUNK) -> np.ndarray:
    """Dataset mIoU difference A - B (percent points) of every bootstrap resample: (resamples,).

    conf_a, conf_b: per-image confusions (n, C, C|C + 1) of the same images in the same order;
    both use the same resampled images (a paired bootstrap).
    """
    # IoU needs only TP, T and P per class: (n, 3C) instead of (n, C(C + 1)) numbers, which
    # for COCO (C = 81) is 27x less memory and work
    return _bootstrap_count_diffs(ev.confusion_counts(conf_a), ev.confusion_counts(conf_b),
                                  resamples, seed, chunk)


def _bootstrap_count_diffs(counts_a: np.ndarray, counts_b: np.ndarray, resamples: int,
                           seed: int, chunk: int = BOOT_CHUNK) -> np.ndarray:
    """:func:`bootstrap_miou_diffs` on per-image counts (n, 3, C). float64 holds integer counts
    exactly up to 2**53, far above any VOC or COCO pixel count, so the sums are exact."""
    n = len(counts_a)
    flat_a = counts_a.reshape(n, -1).astype(np.float64)
    flat_b = counts_b.reshape(n, -1).astype(np.float64)
    out = []
    for w in bootstrap_weights(n, resamples, seed, chunk):
        w = w.astype(np.float64)
        ma = _miou_of_counts((w @ flat_a).reshape((len(w),) + counts_a.shape[1:]))
        mb = _miou_of_counts((w @ flat_b).reshape((len(w),) + counts_b.shape[1:]))
        out.append(ma - mb)
    return np.concatenate(out)


# ---------------------------------------------------------------- the test


def _json_float(v: float | None) -> float | None:
    """NaN and infinities have no JSON spelling: written as null."""
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class PairedResult:
    """Paired comparison of methods A and B on n images.

    miou_a, miou_b: dataset mIoU in % (summed confusions, as eval_cam reports); mean_diff:
    mean over images of per-image score A - B (percent points); t, p_value: paired t-test
    (two-sided; NaN when n < 2 or all differences are equal, +-inf when they are equal and
    non-zero); ci95: bootstrap 95% interval of miou_a - miou_b (percent points);
    scores_a, scores_b: float64 (n,) per-image scores in %; confusion_a, confusion_b: the
    summed (C, C|C + 1) matrices (eval_cam's confusion of each folder).
    """

    n: int
    miou_a: float
    miou_b: float
    mean_diff: float
    t: float
    p_value: float
    ci95: tuple[float, float]
    scores_a: np.ndarray = field(repr=False)
    scores_b: np.ndarray = field(repr=False)
    confusion_a: np.ndarray = field(repr=False)
    confusion_b: np.ndarray = field(repr=False)
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    t_a: float | None = None
    t_b: float | None = None
    dir_a: str | None = None
    dir_b: str | None = None

    @property
    def miou_diff(self) -> float:
        """Dataset mIoU difference A - B in percent points (the centre of ci95's bootstrap)."""
        return self.miou_a - self.miou_b

    def to_json(self) -> dict:
        """JSON-ready dict; non-finite t / p_value (n < 2, identical folders) become null."""
        return {"n": self.n, "mean_diff": _json_float(self.mean_diff), "t": _json_float(self.t),
                "p_value": _json_float(self.p_value),
                "ci95": [_json_float(v) for v in self.ci95],
                "miou_a": _json_float(self.miou_a), "miou_b": _json_float(self.miou_b),
                "t_a": self.t_a, "t_b": self.t_b, "dir_a": self.dir_a, "dir_b": self.dir_b,
                "resamples": self.resamples, "seed": self.seed}

    def lines(self) -> list[str]:
        """Readable summary; the last line is ``paired: A-B mIoU diff +X.XX pp, 95% CI ...``."""
        lo, hi = self.ci95
        ttest = f"t={self.t:.3f}, p={self.p_value:.3g} (two-sided, df={self.n - 1})"
        if math.isnan(self.t):
            ttest += ": undefined, n < 2 or every per-image difference equal"
        head = [f"{k}: mIoU {m:.2f}%{'' if t is None else ' at t=' + format_t(t)}  {d or ''}"
                .rstrip()
                for k, m, t, d in (("A", self.miou_a, self.t_a, self.dir_a),
                                   ("B", self.miou_b, self.t_b, self.dir_b))]
        return head + [
            f"per-image mIoU (as t_statistic.py), mean A-B: {self.mean_diff:+.2f} pp",
            f"paired t-test: {ttest}",
            f"bootstrap 95% CI of the dataset mIoU difference A-B: [{lo:+.2f}, {hi:+.2f}] pp "
            f"({self.resamples} resamples, seed {self.seed})",
            f"paired: A-B mIoU diff {self.miou_diff:+.2f} pp, 95% CI [{lo:+.2f}, {hi:+.2f}], "
            f"p={self.p_value:.3g} ({self.n} images)"]


def _check_bootstrap(resamples: int, seed: int) -> None:
    if int(resamples) < 1:
        raise UserError(f"--resamples must be >= 1, got {resamples}")
    if int(seed) < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")


def paired_test(conf_a: np.ndarray, conf_b: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0) -> PairedResult:
    """Paired t-test and bootstrap CI from per-image confusions of the same images.

    conf_a, conf_b: (n, C, C|C + 1) from :func:`per_image_confusions` (widths may differ;
    the class count C must be the same).
    """
    conf_a, conf_b = np.asarray(conf_a), np.asarray(conf_b)
    if conf_a.ndim != 3 or conf_b.ndim != 3 or len(conf_a) != len(conf_b) or not len(conf_a):
        raise ValueError(f"need two (n, C, C|C + 1) stacks of the same n >= 1, got "
                         f"{conf_a.shape} and {conf_b.shape}")
    if conf_a.shape[1] != conf_b.shape[1]:
        raise ValueError(f"the two stacks count different classes: {conf_a.shape} and "
                         f"{conf_b.shape}")
    return paired_test_counts(ev.confusion_counts(conf_a), ev.confusion_counts(conf_b),
                              conf_a.sum(axis=0), conf_b.sum(axis=0), resamples, seed)


def paired_test_counts(counts_a: np.ndarray, counts_b: np.ndarray, total_a: np.ndarray,
                       total_b: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0) -> PairedResult:
    """:func:`paired_test` from :func:`per_image_counts`: per-image counts (n, 3, C) of the
    same images and each folder's summed confusion (C, C|C + 1)."""
    from scipy import stats

    _check_bootstrap(resamples, seed)
    scores_a, scores_b = _miou_of_counts(counts_a), _miou_of_counts(counts_b)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # n < 2 or zero variance: scipy returns NaN (or inf) with a warning; reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        tt = stats.ttest_rel(scores_a, scores_b)
    diffs = _bootstrap_count_diffs(counts_a, counts_b, int(resamples), int(seed))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return PairedResult(n=len(counts_a), miou_a=ev.miou_from_confusion(total_a),
                        miou_b=ev.miou_from_confusion(total_b),
                        mean_diff=float(np.mean(scores_a - scores_b)), t=float(tt.statistic),
                        p_value=float(tt.pvalue), ci95=(float(lo), float(hi)),
                        scores_a=scores_a, scores_b=scores_b, confusion_a=total_a,
                        confusion_b=total_b, resamples=int(resamples),
                        seed=int(seed))


def compare_folders(names: Sequence[str], dir_a: str | os.PathLike, dir_b: str | os.PathLike,
                    gt_dir: str | os.PathLike, kind: str = "npy", t_a: float | None = None,
                    t_b: float | None = None, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0, num_workers: int | None = None, *,
                    num_classes: int = NUM_CLASSES) -> PairedResult:
    """Paired comparison of ``dir_a`` and ``dir_b`` over ``names`` against ``gt_dir``.

    npy: A is scored at threshold t_a and B at t_b (t_b None = t_a); png: no thresholds.
    num_classes: 21 (PASCAL VOC 2012) or 81 (MS COCO 2014), as :func:`ev.evaluate`.
    Flags are checked before any file is read.
    """
    _check_bootstrap(resamples, seed)
    ev.check_num_classes(num_classes)
    if kind == "npy" and t_b is None:
        t_b = t_a
    if kind == "png":
        t_a = t_b = None
    names = list(names)
    for folder, t in ((dir_a, t_a), (dir_b, t_b)):  # both before the first (long) pass
        _check_inputs(names, folder, gt_dir, kind, t)
    counts_a, total_a = per_image_counts(names, dir_a, gt_dir, kind, t_a, num_workers,
                                         num_classes=num_classes)
    counts_b, total_b = per_image_counts(names, dir_b, gt_dir, kind, t_b, num_workers,
                                         num_classes=num_classes)
    res = paired_test_counts(counts_a, counts_b, total_a, total_b, resamples, seed)
    res.t_a = None if t_a is None else float(t_a)
    res.t_b = None if t_b is None else float(t_b)
    res.dir_a, res.dir_b = str(dir_a), str(dir_b)
    return res
