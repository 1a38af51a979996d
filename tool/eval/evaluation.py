"""mIoU of CAM dicts or label PNGs against VOC or COCO masks, with MuSCLe/SEAM semantics
(METHOD.md 7, D9).

The class count C (with background) is a parameter, ``num_classes`` (21 = PASCAL VOC 2012,
81 = MS COCO 2014, :func:`data.description.describe`), default VOC's; functions of a confusion
matrix read it from the matrix's shape. Label values are 0..C - 1 and 255 on both data sets.

Reference semantics (``do_python_eval``), reproduced exactly:

* npy prediction: a dict {0-based foreground class k: float H x W map}. A float32 (C, H, W)
  zero tensor gets map k at channel k + 1 and the constant t at channel 0; the prediction is
  the argmax with ties to the lowest index. Absent classes stay 0 channels, so they can win
  where every present map is negative and t < 0. No resize.
* png prediction: the palette indices themselves.
* valid pixels are gt < 255; P_c, T_c and TP_c are summed over the whole dataset and
  IoU_c = TP_c / (T_c + P_c - TP_c + 1e-10); mIoU is the mean over all C classes x 100.

Unlike the reference, a whole threshold curve costs one pass over the files. Per pixel let m be
the largest foreground value and a its first argmax; for threshold t the prediction is 0 when
float32(t) >= m and a + 1 otherwise. With sorted thresholds, the number of thresholds strictly
below m says from which threshold on the pixel turns background, so one bincount over
(that count, gt, a + 1) and a cumulative sum give every threshold's confusion matrix.

Confusion matrices are int64 arrays indexed [threshold, gt, pred], shape (T, C, C). A png
prediction may hold values that are no class (255 in IRN-style labels); as in the reference
those pixels still count in T of their GT class, so png matrices carry one extra column for
them (column C): shape (1, C, C + 1). Every function below accepts either width.

Deliberate differences from the reference, all for inputs it would crash on or miscount:
counts are int64 (the reference sums into 32-bit shared ints); GT values outside 0..C - 1 and 255,
NaN maps, malformed dicts, keys that look 1-based (the GT's classes each one too high, which
the reference scores as the next class) and size mismatches are errors naming the file; an
empty dict is read as "no foreground class" at the GT size (the reference cannot read its
size).
"""
from __future__ import annotations

import decimal
import functools
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from data.description import DESCRIPTIONS, DatasetDescription, describe
from data.voc import IGNORE_INDEX, NUM_CLASSES, load_mask
from tool.common.errors import UserError

DEFAULT_T_RANGE = "0.00:0.60:0.01"  # eval_cam.py --curve (D9)
MAX_THRESHOLDS = 10000
EPS = 1e-10


# ---------------------------------------------------------------- class count


@dataclass(frozen=True)
class _Layout:
    """What the evaluator derives from a class count, computed once per count."""

    data: DatasetDescription
    gt_row: np.ndarray  # (256,) GT value -> confusion row; 255 -> spare row C (dropped)
    one_based_hint: str

    @property
    def num_classes(self) -> int:  # C, with background; column C of png matrices = no class
        return self.data.num_classes

    @property
    def num_fg(self) -> int:
        return self.data.num_fg


@functools.cache
def _layout_of(num_classes: int) -> _Layout:
    data = describe(num_classes)  # UserError for a count no data set has
    gt_row = np.arange(256, dtype=np.intp)
    gt_row[IGNORE_INDEX] = data.num_classes
    gt_row.flags.writeable = False
    hint = (f"the hand-off format keys maps by 0-based foreground index 0..{data.num_fg - 1}, "
            f"0 = {data.class_names[0]} (METHOD.md 6)")
    return _Layout(data, gt_row, hint)


def _layout(num_classes: int) -> _Layout:
    """The per-count tables of ``num_classes`` (21 VOC, 81 COCO); UserError for others."""
    if not _is_int(num_classes):
        raise UserError(f"num_classes must be an integer, got {num_classes!r}")
    return _layout_of(int(num_classes))


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int when a known data set has that many classes with background
    (21 PASCAL VOC 2012, 81 MS COCO 2014); a UserError naming the known counts otherwise."""
    return _layout(num_classes).num_classes


# ---------------------------------------------------------------- thresholds


def parse_t_range(text: str) -> np.ndarray:
    """``"START:STOP:STEP"`` -> float64 (T,) thresholds START, START + STEP, ... < STOP.

    Computed in decimal arithmetic, so ``0.00:0.60:0.01`` gives exactly 60 values whose floats
    equal ``i / 100`` (the reference's ``0.07`` is the same double as ours).
    """
    parts = str(text).split(":")
    if len(parts) != 3:
        raise UserError(f"--t_range must be START:STOP:STEP, got {text!r}")
    try:
        start, stop, step = (decimal.Decimal(p.strip()) for p in parts)
    except decimal.InvalidOperation:
        raise UserError(f"--t_range must be three numbers START:STOP:STEP, got {text!r}") from None
    if not all(v.is_finite() for v in (start, stop, step)):
        raise UserError(f"--t_range values must be finite, got {text!r}")
    if step <= 0 or stop <= start:
        raise UserError(f"--t_range needs STEP > 0 and STOP > START, got {text!r}")
    n = int(((stop - start) / step).to_integral_value(rounding=decimal.ROUND_CEILING))
    if n > MAX_THRESHOLDS:
        raise UserError(f"--t_range {text!r} gives {n} thresholds, more than {MAX_THRESHOLDS}")
    return np.array([float(start + i * step) for i in range(n)], np.float64)


def _as_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise UserError("thresholds must be a non-empty list of finite numbers")
    return thr


# ---------------------------------------------------------------- per-image confusion


def _check_gt(gt: np.ndarray, where: str, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """A 2-D integer mask with values 0..num_classes - 1 and 255; UserError naming ``where``."""
    num_fg = _layout(num_classes).num_fg
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.dtype.kind not in "ui":
        raise UserError(f"{where}: ground truth must be a 2-D integer array, got {gt.shape}")
    if np.any((gt > num_fg) & (gt != IGNORE_INDEX)) or np.any(gt < 0):
        raise UserError(f"{where}: ground-truth values outside 0..{num_fg} and 255"
                        f"{_count_hint(gt, num_classes)}")
    return gt


def _count_hint(gt: np.ndarray, num_classes: int) -> str:
    """`` (max 50: MS COCO 2014 masks, num_classes 81)`` when a larger known class count would
    accept the mask (a COCO mask evaluated with VOC's count); empty otherwise."""
    values = gt[gt != IGNORE_INDEX]
    if values.min() < 0:
        return ""
    top = int(values.max())
    fits = [d for n, d in sorted(DESCRIPTIONS.items()) if n > num_classes and top < n]
    return (f" (max {top}: {fits[0].title} masks need num_classes {fits[0].num_classes})"
            if fits else "")


def _is_int(k: object) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _all_one_based(keys: object, num_fg: int) -> bool:
    """Every key an int in 1..num_fg, as a writer keying maps by label value would give."""
    keys = list(keys)
    return bool(keys) and all(_is_int(k) and 1 <= k <= num_fg for k in keys)


def _check_dict(pred: object, shape: tuple[int, int], where: str,
                gt: np.ndarray | None = None, ref: str = "the ground truth",
                num_classes: int = NUM_CLASSES) -> dict[int, np.ndarray]:
    """Validate a CAM dict (METHOD.md 6): int keys 0..num_fg - 1 -> numeric 2-D maps of the GT
    size (num_fg = num_classes - 1: 20 VOC, 80 COCO).

    With ``gt``, also refuse a dict whose keys are the ground truth's classes each one too
    high: keys written 1-based (label values 1..num_fg) that would be scored as the next
    class without a word. A valid dict's keys are its image's labels, so they never match
    the GT shifted by one; keys that differ from the GT otherwise are scored as they are.
    """
    lay = _layout(num_classes)
    num_fg = lay.num_fg
    if not isinstance(pred, dict):
        raise UserError(f"{where}: not a dict of class index -> 2-D map "
                        f"(got {type(pred).__name__})")
    out = {}
    for k, v in pred.items():
        if not _is_int(k) or not 0 <= k < num_fg:
            hint = f"; keys look 1-based (1..{num_fg}): {lay.one_based_hint}" \
                if _all_one_based(pred, num_fg) else ""
            raise UserError(f"{where}: dict key {k!r} is not a class index "
                            f"0..{num_fg - 1}{hint}")
        v = np.asarray(v)
        if v.ndim != 2 or v.dtype.kind not in "biuf":
            raise UserError(f"{where}: map of class {k} is not a 2-D numeric array "
                            f"(shape {v.shape}, dtype {v.dtype})")
        if v.shape != shape:
            raise UserError(f"{where}: map of class {k} is {v.shape[0]}x{v.shape[1]} but "
                            f"{ref} is {shape[0]}x{shape[1]}")
        out[int(k)] = v
    if gt is not None and _all_one_based(out, num_fg):
        # 0-based classes in the GT: label value c (1..num_fg) is class c - 1
        counts = np.bincount(np.asarray(gt).ravel().astype(np.intp), minlength=num_fg + 1)
        present = set(np.flatnonzero(counts[1:num_fg + 1]).tolist())
        if set(out) != present and {k - 1 for k in out} == present:
            raise UserError(f"{where}: dict keys {sorted(out)} look 1-based: the ground truth "
                            f"holds classes {sorted(present)} (0-based), each key one higher; "
                            f"{lay.one_based_hint}")
    return out


def check_cam_dict(pred: object, shape: tuple[int, int], where: str,
                   ref: str = "the image", *, num_classes: int = NUM_CLASSES
                   ) -> dict[int, np.ndarray]:
    """The evaluator's checks of a hand-off CAM dict (METHOD.md 6), for other readers (stage 2):
    int keys 0..num_classes - 2 (0..19 VOC, 0..79 COCO) -> numeric 2-D maps of ``shape``, the
    size of ``ref``; UserError naming ``where`` otherwise. Returns {int key: map}."""
    return _check_dict(pred, shape, where, ref=ref, num_classes=num_classes)


def fg_max_argmax(pred: dict[int, np.ndarray], shape: tuple[int, int],
                  where: str = "prediction", gt: np.ndarray | None = None, *,
                  num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Max and first argmax over the num_classes - 1 float32 foreground channels of a CAM dict.

    Returns m: float32 (H, W) and label: intp (H, W) in 1..num_classes - 1 (= argmax + 1).
    Absent classes are zero channels; only the lowest-index absent one can win a tie, so it
    stands for all (the cost grows with the present classes, not with the class count).
    ``gt`` (validated, of ``shape``): also refuse keys that look 1-based (:func:`_check_dict`).
    """
    maps = _check_dict(pred, shape, where, gt, num_classes=num_classes)
    absent = [k for k in range(_layout(num_classes).num_fg) if k not in maps][:1]
    m = label = None
    for k in sorted(list(maps) + absent):
        v = np.asarray(maps[k], np.float32) if k in maps else np.float32(0)  # reference casts
        if m is None:
            m = np.broadcast_to(v, shape).astype(np.float32)  # a fresh, writable copy
            label = np.full(shape, k + 1, np.intp)
            continue
        label[v > m] = k + 1  # strictly greater: ties keep the lower class
        np.maximum(m, v, out=m)  # propagates NaN, caught below
    if np.isnan(m).any():
        raise UserError(f"{where}: a map contains NaN")
    return m, label


def _sorted_thresholds(thresholds: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 thresholds in ascending order, the stable order that sorts the given ones)."""
    thr = _as_thresholds(thresholds).astype(np.float32)  # the reference compares in float32
    order = np.argsort(thr, kind="stable")
    return thr[order], order


def _npy_counts(pred: dict[int, np.ndarray], gt: np.ndarray, thr_sorted: np.ndarray,
                where: str, num_classes: int) -> np.ndarray:
    """Pixel counts of one CAM dict by (number of thresholds below its max m, gt, label):
    int64 (T + 1, C, C). Counts of several images add up; :func:`_conf_from_counts` turns a
    sum into confusions once (for C = 81 that costs more than the counting of an image)."""
    lay = _layout(num_classes)
    gt = _check_gt(gt, where, num_classes)
    m, label = fg_max_argmax(pred, gt.shape, where, gt, num_classes=num_classes)
    # thresholds strictly below m predict the foreground label, the others background
    n_below = np.searchsorted(thr_sorted, m, side="left")
    n_t, c = len(thr_sorted), lay.num_classes
    rows = lay.gt_row[gt]  # ignored pixels go to a spare row, dropped below
    hist = np.bincount(((n_below * (c + 1) + rows) * c + label).ravel(),
                       minlength=(n_t + 1) * (c + 1) * c)
    return hist.reshape(n_t + 1, c + 1, c)[:, :c].astype(np.int64, copy=False)


def _conf_from_counts(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(T + 1, C, C) counts of :func:`_npy_counts` -> (T, C, C) confusions in the thresholds'
    given order (``order`` of :func:`_sorted_thresholds`)."""
    n_t = len(order)
    # threshold j (sorted): foreground from pixels with n_below > j, background from the rest
    conf_sorted = np.cumsum(counts[::-1], axis=0)[::-1][1:]
    conf_sorted[:, :, 0] += np.cumsum(counts.sum(axis=2), axis=0)[:n_t]
    conf = np.empty_like(conf_sorted)
    conf[order] = conf_sorted
    return conf


def confusion_npy(pred: dict[int, np.ndarray], gt: np.ndarray,
                  thresholds: Sequence[float] | np.ndarray,
                  where: str = "prediction", *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrices of one CAM dict for every threshold at once.

    pred: {0-based class k: (H, W) map}, k < C - 1; gt: (H, W) ints in 0..C - 1 or 255;
    thresholds: (T,); C = num_classes (21 VOC, 81 COCO). Returns int64 (T, C, C) indexed
    [threshold, gt, pred], thresholds in the given order.
    """
    thr, order = _sorted_thresholds(thresholds)
    return _conf_from_counts(_npy_counts(pred, gt, thr, where, num_classes), order)


def confusion_png(pred: np.ndarray, gt: np.ndarray, where: str = "prediction", *,
                  num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of one label map: (H, W) ints -> int64 (1, C, C + 1) [_, gt, pred],
    C = num_classes (21 VOC, 81 COCO).

    Column C counts valid pixels whose prediction is not a class 0..C - 1 (e.g. 255): they
    are misses for their GT class, exactly as in the reference, and predictions of no class.
    """
    c = _layout(num_classes).num_classes
    gt = _check_gt(gt, where, num_classes)
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.dtype.kind not in "biu":
        raise UserError(f"{where}: prediction must be a 2-D integer label map, got {pred.shape}")
    if pred.shape != gt.shape:
        raise UserError(f"{where}: prediction is {pred.shape[0]}x{pred.shape[1]} but the "
                        f"ground truth is {gt.shape[0]}x{gt.shape[1]}")
    valid = gt != IGNORE_INDEX
    p = pred[valid].astype(np.int64)
    p[(p < 0) | (p >= c)] = c  # the no-class column
    cols = c + 1
    hist = np.bincount(gt[valid].astype(np.int64) * cols + p, minlength=c * cols)
    return hist.reshape(1, c, cols).astype(np.int64, copy=False)


# ---------------------------------------------------------------- IoU


def confusion_counts(conf: np.ndarray) -> np.ndarray:
    """What IoU needs of a confusion: (..., C, C) or png-style (..., C, C + 1) -> (..., 3, C)
    rows TP_c, T_c (GT pixels, the no-class column included), P_c. Sums of confusions have
    the sums of these as counts, so sums over many images can be taken on 3C numbers instead
    of C(C + 1) (tool/eval/paired.py's bootstrap). C is the matrix's row count."""
    conf = np.asarray(conf)
    if conf.ndim < 2 or conf.shape[-2] < 1 or conf.shape[-1] - conf.shape[-2] not in (0, 1):
        raise ValueError(f"confusion must be (..., C, C) or (..., C, C + 1), got {conf.shape}")
    sq = conf[..., :conf.shape[-2]]
    return np.stack([np.diagonal(sq, axis1=-2, axis2=-1), conf.sum(axis=-1), sq.sum(axis=-2)],
                    axis=-2)


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU (fractions) from :func:`confusion_counts`: (..., 3, C) -> (..., C)."""
    tp, t, p = np.moveaxis(np.asarray(counts), -2, 0)
    return tp / (t + p - tp + EPS)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU (fractions): (..., C, C) or png-style (..., C, C + 1) -> (..., C).

    C, the class count with background, is the matrix's row count (21 VOC, 81 COCO).
    """
    return iou_from_counts(confusion_counts(conf))


def miou_from_confusion(conf: np.ndarray) -> float:
    """mIoU in percent over all C classes (background included) of one (C, C|C + 1) matrix."""
    if np.ndim(conf) != 2:
        raise ValueError(f"expected one (C, C) matrix, got shape {np.shape(conf)}")
    return float(np.mean(iou_from_confusion(conf)) * 100)


def miou_curve(conf: np.ndarray) -> np.ndarray:
    """mIoU in percent per threshold: (T, C, C|C + 1) -> float64 (T,)."""
    return np.array([miou_from_confusion(c) for c in conf], np.float64)


# ---------------------------------------------------------------- files


def load_cam_dict(path: str | os.PathLike) -> dict:
    """Load a CAM hand-off npy (pickled dict, METHOD.md 6); missing or non-dict -> UserError."""
    try:
        obj = np.load(path, allow_pickle=True)
    except FileNotFoundError:
        raise UserError(f"prediction not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UserError(f"cannot read prediction {path} ({type(e).__name__})") from None
    if not (isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ()):
        raise UserError(f"{path} is not a dict of class index -> 2-D map")
    return obj.item()


def _file_counts(name: str, predict_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                 kind: str, thr_sorted: np.ndarray | None, num_classes: int) -> np.ndarray:
    """One file's summable counts: npy (T + 1, C, C) of :func:`_npy_counts`, png its
    (1, C, C + 1) confusion."""
    pred_path = Path(predict_dir) / f"{name}.{kind}"
    if not pred_path.is_file():
        raise UserError(f"prediction not found: {pred_path}")
    gt_path = Path(gt_dir) / f"{name}.png"
    gt = _check_gt(load_mask(gt_path), str(gt_path), num_classes)
    if kind == "png":
        return confusion_png(load_mask(pred_path), gt, where=str(pred_path),
                             num_classes=num_classes)
    return _npy_counts(load_cam_dict(pred_path), gt, thr_sorted, str(pred_path), num_classes)


def confusion_file(name: str, predict_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                   kind: str, thresholds: np.ndarray | None, *,
                   num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion of ``<predict_dir>/<name>.<kind>`` against ``<gt_dir>/<name>.png``:
    (T, C, C) for npy, (1, C, C + 1) for png, C = num_classes."""
    return _confusion_chunk(([name], predict_dir, gt_dir, kind, thresholds, num_classes))


def _confusion_chunk(job: tuple) -> np.ndarray:
    """Summed confusion of one job ``(names, predict_dir, gt_dir, kind, thresholds,
    num_classes)``: the files' counts are summed, then turned into confusions once."""
    names, predict_dir, gt_dir, kind, thresholds, num_classes = job
    thr, order = (None, None) if kind == "png" else _sorted_thresholds(thresholds)
    total = None
    for name in names:
        counts = _file_counts(name, predict_dir, gt_dir, kind, thr, num_classes)
        if total is None:
            total = counts.copy()  # owned and contiguous: summed in place
        else:
            total += counts
    return total if kind == "png" else _conf_from_counts(total, order)


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Failure:
    """A worker's exception as a value: a UserError's message, or another's traceback."""

    message: str
    user: bool


def _call_catching(task: tuple[int, Callable[[Any], Any], Any]) -> tuple[int, Any]:
    """Run one job in a worker; its exception is returned, never raised across the pool."""
    index, func, job = task
    try:
        return index, func(job)
    except UserError as e:
        return index, _Failure(str(e), True)
    except Exception:  # noqa: BLE001 - a bug: its traceback is re-raised in the parent
        return index, _Failure(traceback.format_exc(), False)


def pool_map(func: Callable[[Any], Any], jobs: Sequence[Any], workers: int,
             combine: Callable[[Any, Any], Any] | None = None) -> Any:
    """``func`` over ``jobs`` in ``workers`` processes (``func`` a module-level function).

    Without ``combine``: the results in job order (a list); with it: the results folded with
    ``combine`` as they arrive (bounded memory). A job that raises makes this raise after
    every job has finished: the UserError of the first failing job in job order (the same
    file as in one process), any other exception as a RuntimeError with the worker's
    traceback.

    Why values and not raising: an exception out of ``imap`` left ``with Pool``
    to call ``terminate()`` while workers were still sending results larger than a pipe
    buffer (a curve's confusions), and CPython's pool shutdown then deadlocks. Here every
    result is read and the pool closes and joins normally; ``terminate()`` remains only for
    an exception in this process (Ctrl-C).
    """
    pool = Pool(workers)
    try:
        tasks = [(i, func, job) for i, job in enumerate(jobs)]
        failures: list[tuple[int, _Failure]] = []
        results: list[Any] = [None] * len(tasks)
        total = None
        for i, res in pool.imap_unordered(_call_catching, tasks):
            if isinstance(res, _Failure):
                failures.append((i, res))
            elif combine is None:
                results[i] = res
            else:
                total = res if total is None else combine(total, res)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    if failures:
        failure = min(failures, key=lambda f: f[0])[1]
        if failure.user:
            raise UserError(failure.message)
        raise RuntimeError(f"a worker process failed:\n{failure.message}")
    return results if combine is None else total


def accumulate(names: Sequence[str], predict_dir: str | os.PathLike,
               gt_dir: str | os.PathLike, kind: str, thresholds: np.ndarray | None,
               num_workers: int, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Sum of per-file confusions over ``names``, in a process pool when num_workers > 1:
    int64 (T, C, C) for npy, (1, C, C + 1) for png, C = num_classes (21 VOC, 81 COCO).
    Memory stays flat in the image count: each worker keeps one running sum."""
    names = list(names)
    check_num_classes(num_classes)  # a bad count fails here, not in every worker
    workers = min(max(int(num_workers), 1), len(names))
    if workers == 1:
        return _confusion_chunk((names, predict_dir, gt_dir, kind, thresholds, num_classes))
    n_chunks = min(len(names), workers * 4)  # several chunks per worker balance uneven files
    bounds = np.linspace(0, len(names), n_chunks + 1).astype(int)
    jobs = [(names[a:b], predict_dir, gt_dir, kind, thresholds, num_classes)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return pool_map(_confusion_chunk, jobs, workers, combine=np.add)


# ---------------------------------------------------------------- results


@dataclass
class CurveResult:
    """Evaluation over a dataset: one mIoU per threshold (a single entry for png).

    thresholds: list of floats, ``[None]`` for png; miou: percent per threshold;
    per_class: {class name: IoU percent} at the best threshold, names by label value from
    :func:`data.description.describe` of C; confusion: (T, C, C|C + 1), C = 21 VOC, 81 COCO.
    """

    thresholds: list
    miou: list
    per_class: dict
    best_t: float | None
    best_miou: float
    confusion: np.ndarray

    @classmethod
    def from_confusion(cls, conf: np.ndarray, thresholds: np.ndarray | None) -> CurveResult:
        """From summed confusions (T, C, C|C + 1); C (21 or 81) picks the class names."""
        names = describe(np.shape(conf)[-2]).cat_names
        curve = miou_curve(conf)
        best = int(np.argmax(curve))  # first index of the maximum
        ts = [None] if thresholds is None else [float(t) for t in thresholds]
        ious = iou_from_confusion(conf[best]) * 100
        return cls(thresholds=ts, miou=[float(v) for v in curve],
                   per_class={n: float(v) for n, v in zip(names, ious)},
                   best_t=ts[best], best_miou=float(curve[best]), confusion=conf)

    def to_json(self) -> dict:
        return {"thresholds": list(self.thresholds), "miou": list(self.miou),
                "best": {"t": self.best_t, "miou": self.best_miou},
                "per_class": dict(self.per_class)}


def evaluate(names: Sequence[str], predict_dir: str | os.PathLike, gt_dir: str | os.PathLike,
             kind: str = "npy", thresholds: Sequence[float] | np.ndarray | None = None,
             num_workers: int | None = None, *, num_classes: int = NUM_CLASSES) -> CurveResult:
    """Evaluate ``<predict_dir>/<name>.<kind>`` against ``<gt_dir>/<name>.png`` for all names.

    npy: every threshold in one pass (default: the D9 curve 0.00 ... 0.59); png: thresholds
    are not used. num_workers: processes (default min(8, cpus); 0 or 1 = in this process).
    num_classes: C with background, 21 (PASCAL VOC 2012) or 81 (MS COCO 2014): the masks'
    values must be 0..C - 1 or 255, the dicts' keys 0..C - 2; the mIoU is over all C classes.
    """
    check_num_classes(num_classes)
    if kind not in ("npy", "png"):
        raise UserError(f"--type must be npy or png, got {kind!r}")
    if not names:
        raise UserError("no images to evaluate (empty list)")
    thr = None
    if kind == "npy":
        thr = parse_t_range(DEFAULT_T_RANGE) if thresholds is None else _as_thresholds(thresholds)
    workers = default_num_workers() if num_workers is None else num_workers
    conf = accumulate(names, predict_dir, gt_dir, kind, thr, workers, num_classes=num_classes)
    return CurveResult.from_confusion(conf, thr)
