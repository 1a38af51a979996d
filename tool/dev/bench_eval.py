"""Benchmark section ``eval``: one-pass threshold curve vs one pass per threshold.

On the toy VOC ``train`` split it writes synthetic CAM dicts (noisy one-hot GT, present classes
only, float32) to a temporary folder, then times the whole 60-threshold curve three ways: the
one-pass evaluator in this process, the reference way (every file loaded again for every
threshold, as MuSCLe's ``--curve`` loop does, also in this process), and the one-pass
evaluator with a worker pool. Both curves must be identical.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from data.voc import NUM_CLASSES, NUM_FG, load_img_name_list, load_mask, save_label_png
from tool.common.fileio import save_npy_dict
from tool.dev.bench import ensure_toy_voc, print_table
from tool.eval import evaluation as ev
from tool.eval import report

TARGET_SPEEDUP = 20.0


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--eval_list", default="ImageSets/Segmentation/train.txt",
                       help="list file, relative to --voc12_root")
    group.add_argument("--eval_t_range", default=ev.DEFAULT_T_RANGE)
    group.add_argument("--eval_workers", type=int, default=ev.default_num_workers(),
                       help="processes for the pooled one-pass run")
    group.add_argument("--eval_repeats", type=int, default=3,
                       help="one-pass runs to take the median of")


# ---------------------------------------------------------------- inputs


def synthetic_gt(out: Path, n: int = 60, seed: int = 0) -> list[str]:
    """Fallback without data.toy_voc: rectangles of random classes with a 255 border band."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = rng.integers(120, 221, size=2)
        gt = np.zeros((h, w), np.uint8)
        for c in rng.choice(np.arange(1, NUM_CLASSES), size=rng.integers(1, 4), replace=False):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            y1, x1 = y0 + rng.integers(20, h // 2), x0 + rng.integers(20, w // 2)
            gt[y0:y1, x0:x1] = 255
            gt[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = c
        names.append(f"synth_{i:04d}")
        save_label_png(gt, out / f"{names[-1]}.png")
    return names


def write_cams(names: list[str], gt_dir: Path, out: Path, seed: int = 0) -> None:
    """One hand-off dict per image: for each GT class, clip(0.6 * onehot + noise) in float32."""
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        gt = load_mask(gt_dir / f"{name}.png")
        d = {}
        for c in np.unique(gt):
            if 1 <= c <= NUM_FG:
                noisy = 0.6 * (gt == c) + rng.normal(0.0, 0.2, size=gt.shape)
                d[int(c) - 1] = np.clip(noisy, 0, 1).astype(np.float32)
        save_npy_dict(out / f"{name}.npy", d)


# ---------------------------------------------------------------- the reference way


def reference_counts(pairs: Iterable[tuple[dict | np.ndarray, np.ndarray]], t: float | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (TP, T, P) over (prediction, GT) pairs exactly as the reference evaluator
    (``do_python_eval``) counts them: a CAM dict becomes an explicit (21, H, W) tensor with t at
    channel 0 and is argmaxed; a label map (png) is the prediction itself; valid = GT < 255."""
    tp, tt, pp = (np.zeros(NUM_CLASSES, np.int64) for _ in range(3))
    for pred, gt in pairs:
        if isinstance(pred, dict):
            tensor = np.zeros((NUM_CLASSES,) + gt.shape, np.float32)
            for k, v in pred.items():
                tensor[k + 1] = v
            tensor[0, :, :] = t
            pred = np.argmax(tensor, axis=0)
        cal = gt < 255
        mask = (pred == gt) * cal
        for c in range(NUM_CLASSES):
            pp[c] += np.sum((pred == c) * cal)
            tt[c] += np.sum((gt == c) * cal)
            tp[c] += np.sum((gt == c) * mask)
    return tp, tt, pp


def reference_miou(tp: np.ndarray, tt: np.ndarray, pp: np.ndarray) -> float:
    """The reference mIoU (%) of per-class counts: IoU_c = TP / (T + P - TP + 1e-10)."""
    iou = [tp[c] / (tt[c] + pp[c] - tp[c] + 1e-10) for c in range(NUM_CLASSES)]
    return float(np.mean(np.array(iou)) * 100)


def per_threshold_miou(names: list[str], cam_dir: Path, gt_dir: Path, t: float) -> float:
    """One full pass over the files for a single t, counting as the reference evaluator does."""
    pairs = ((np.load(cam_dir / f"{name}.npy", allow_pickle=True).item(),
              np.array(Image.open(gt_dir / f"{name}.png"))) for name in names)
    return reference_miou(*reference_counts(pairs, t))


# ---------------------------------------------------------------- section


def _timed(fn, repeats: int = 1):
    """(result of the last call, median seconds over ``repeats`` calls)."""
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def _measure(names: list[str], cam_dir: Path, gt_dir: Path, args) -> dict:
    thr = ev.parse_t_range(args.eval_t_range)
    one, t_one = _timed(lambda: ev.evaluate(names, cam_dir, gt_dir, "npy", thr, 0),
                        args.eval_repeats)
    base, t_base = _timed(lambda: [per_threshold_miou(names, cam_dir, gt_dir, t) for t in thr])
    pool, t_pool = _timed(lambda: ev.evaluate(names, cam_dir, gt_dir, "npy", thr,
                                              args.eval_workers), args.eval_repeats)
    identical = one.miou == base and pool.miou == base
    n, n_t = len(names), len(thr)
    rows = [["one pass, 1 process", t_one, n / t_one, t_base / t_one],
            [f"{n_t} passes, 1 process", t_base, n / t_base, 1.0],
            [f"one pass, {args.eval_workers} workers", t_pool, n / t_pool, t_base / t_pool]]
    print_table(f"eval: {n} images x {n_t} thresholds (images/s = whole curve)",
                ["method", "seconds", "images/s", "speed-up"], rows)
    speedup = t_base / t_one
    print(f"curves identical: {identical}; best mIoU {one.best_miou:.2f}% at "
          f"t={report.format_t(one.best_t)}; one-pass speed-up {speedup:.1f}x "
          f"(target {TARGET_SPEEDUP:.0f}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")
    if not identical:
        raise RuntimeError("one-pass and per-threshold mIoU curves differ")
    return {"images": n, "thresholds": n_t, "onepass_s": t_one, "perthreshold_s": t_base,
            "pool_s": t_pool, "pool_workers": args.eval_workers,
            "onepass_images_per_s": n / t_one, "perthreshold_images_per_s": n / t_base,
            "pool_images_per_s": n / t_pool, "speedup": speedup,
            "pool_speedup": t_base / t_pool, "identical": identical,
            "best_miou": one.best_miou, "best_t": one.best_t}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        tmp = Path(tmp)
        root = ensure_toy_voc(args.voc12_root)
        if root is None:
            print("data.toy_voc is not available: using synthetic rectangles as ground truth")
            gt_dir = tmp / "gt"
            names = synthetic_gt(gt_dir)
        else:
            gt_dir = root / "SegmentationClass"
            names = load_img_name_list(root / args.eval_list)
        write_cams(names, gt_dir, tmp / "cams")
        return _measure(names, tmp / "cams", gt_dir, args)
