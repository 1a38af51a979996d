"""Benchmark section ``eval``: one-pass threshold curve vs one pass per threshold, and the
81-class evaluator at COCO scale.

VOC (21 classes). On the toy VOC ``train`` split it writes synthetic CAM dicts (noisy one-hot
GT, present classes only, float32) to a temporary folder, then times the whole 60-threshold
curve three ways: the one-pass evaluator in this process, the reference way (every file loaded
again for every threshold, as MuSCLe's ``--curve`` loop does, also in this process), and the
one-pass evaluator with a worker pool. Both curves must be identical.

COCO (81 classes, issue 15 part 4, "Scale"). ``--eval_coco_images N`` COCO-sized images
(``--eval_coco_size``, default 480 x 640) are generated once into a temporary folder, outside
the timing: GT masks with a few of the 80 classes each and 255 borders, and CAM dicts with
those classes' maps (float32), as ``infer_cam.py`` hands them off. The whole threshold curve
(``--eval_t_range``) is then evaluated in one pass with ``--eval_workers`` processes on the
first N/4, N/2 and N images, each count in a fresh process that reports the seconds, the
growth of its peak resident set over its resident set just before ``evaluate`` and the same
for its largest pool worker (forked from it at that point). Memory must not grow with the
image count: every worker keeps one running (T, 81, 81) sum. The rate at N gives the projected
time of COCO val (40,137 images).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from data.coco import STANDARD_COUNTS
from data.description import COCO14
from data.voc import NUM_CLASSES, load_img_name_list, load_mask, save_label_png
from tool.common.errors import UserError, cli_main
from tool.common.fileio import save_npy_dict
from tool.dev.bench import (
    ensure_toy_voc,
    hw_arg,
    maxrss_kb,
    peak_rss_kb,
    print_table,
    reset_peak_rss,
    rss_kb,
)
from tool.eval import evaluation as ev
from tool.eval import report

TARGET_SPEEDUP = 20.0
ROOT = Path(__file__).resolve().parents[2]
COCO_VAL_IMAGES = STANDARD_COUNTS["val"]  # 40,137: the projection's target
COCO_SIZE = (480, 640)
COCO_MAX_CLASSES = 4  # classes per generated image: 1..4 (COCO val averages about 2.9)
MB = 1024  # KB per MB (rss_kb / maxrss_kb are in KB)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--eval_list", default="ImageSets/Segmentation/train.txt",
                       help="list file, relative to --voc12_root")
    group.add_argument("--eval_t_range", default=ev.DEFAULT_T_RANGE)
    group.add_argument("--eval_workers", type=int, default=ev.default_num_workers(),
                       help="processes for the pooled one-pass runs (VOC and COCO)")
    group.add_argument("--eval_repeats", type=int, default=3,
                       help="one-pass runs to take the median of")
    group.add_argument("--eval_coco_images", type=int, default=2000, metavar="N",
                       help="81-class run: N generated COCO-sized images, evaluated at N/4, "
                            "N/2 and N (0 = skip it; about 3 MB of disk per image)")
    group.add_argument("--eval_coco_size", type=hw_arg, default=COCO_SIZE, metavar="H,W",
                       help="size of the generated COCO images (default 480,640)")


# ---------------------------------------------------------------- inputs


def synthetic_mask(rng: np.random.Generator, size: tuple[int, int], num_classes: int,
                   max_classes: int = 3) -> np.ndarray:
    """(H, W) uint8: background with 1..max_classes rectangles of distinct random classes
    1..num_classes - 1, each inside a 2-pixel 255 band (an object's uncertain outline)."""
    h, w = size
    gt = np.zeros((h, w), np.uint8)
    n = int(rng.integers(1, max_classes + 1))
    for c in rng.choice(np.arange(1, num_classes), size=n, replace=False):
        y0, x0 = rng.integers(0, max(h // 2, 1)), rng.integers(0, max(w // 2, 1))
        y1 = y0 + rng.integers(min(20, h // 2), max(h // 2, 1) + 1)
        x1 = x0 + rng.integers(min(20, w // 2), max(w // 2, 1) + 1)
        gt[y0:y1, x0:x1] = 255
        gt[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = c
    return gt


def synthetic_gt(out: Path, n: int = 60, seed: int = 0) -> list[str]:
    """Fallback without data.toy_voc: VOC masks of 120..220 px (:func:`synthetic_mask`)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        size = tuple(int(v) for v in rng.integers(120, 221, size=2))
        names.append(f"synth_{i:04d}")
        save_label_png(synthetic_mask(rng, size, NUM_CLASSES), out / f"{names[-1]}.png")
    return names


def cam_dict(gt: np.ndarray, rng: np.random.Generator, num_classes: int = NUM_CLASSES
             ) -> dict[int, np.ndarray]:
    """The hand-off dict of a mask: for each GT class c, key c - 1 ->
    clip(0.6 * onehot + N(0, 0.2)) in float32."""
    d = {}
    for c in np.unique(gt):
        if 1 <= c < num_classes:
            noisy = 0.6 * (gt == c) + rng.normal(0.0, 0.2, size=gt.shape)
            d[int(c) - 1] = np.clip(noisy, 0, 1).astype(np.float32)
    return d


def write_cams(names: list[str], gt_dir: Path, out: Path, seed: int = 0) -> None:
    """One hand-off dict per VOC mask (:func:`cam_dict`)."""
    for i, name in enumerate(names):
        gt = load_mask(gt_dir / f"{name}.png")
        save_npy_dict(out / f"{name}.npy", cam_dict(gt, np.random.default_rng([seed, i])))


def coco_name(i: int) -> str:
    return f"coco_{i:06d}"


def _write_coco_chunk(job: tuple) -> int:
    """Mask and CAM dict of images ``start .. stop - 1``; returns their bytes on disk."""
    folder, start, stop, size, seed = job
    nbytes = 0
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        gt = synthetic_mask(rng, size, COCO14.num_classes, COCO_MAX_CLASSES)
        gt_path, cam_path = folder / "gt" / f"{coco_name(i)}.png", folder / "cams" / \
            f"{coco_name(i)}.npy"
        save_label_png(gt, gt_path)
        save_npy_dict(cam_path, cam_dict(gt, rng, COCO14.num_classes))
        nbytes += gt_path.stat().st_size + cam_path.stat().st_size
    return nbytes


def write_coco_case(folder: Path, n: int, size: tuple[int, int] = COCO_SIZE,
                    workers: int = 0, seed: int = 0) -> int:
    """``n`` COCO-like images: ``folder/gt/coco_<i>.png`` masks (values 0..80 and 255) and
    ``folder/cams/coco_<i>.npy`` dicts (keys 0..79), image i from seed (seed, i) whatever the
    worker count; returns the bytes written."""
    workers = min(max(int(workers), 1), n)
    bounds = np.linspace(0, n, min(n, workers * 4) + 1).astype(int)
    jobs = [(Path(folder), int(a), int(b), tuple(size), seed)
            for a, b in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        return sum(_write_coco_chunk(job) for job in jobs)
    return ev.pool_map(_write_coco_chunk, jobs, workers, combine=lambda a, b: a + b)


# ---------------------------------------------------------------- the reference way


def reference_counts(pairs: Iterable[tuple[dict | np.ndarray, np.ndarray]], t: float | None,
                     num_classes: int = NUM_CLASSES
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (TP, T, P), each (C,) with C = num_classes, over (prediction, GT) pairs exactly
    as the reference evaluator (``do_python_eval``) counts them: a CAM dict becomes an explicit
    (C, H, W) tensor with t at channel 0 and is argmaxed; a label map (png) is the prediction
    itself; valid = GT < 255."""
    tp, tt, pp = (np.zeros(num_classes, np.int64) for _ in range(3))
    for pred, gt in pairs:
        if isinstance(pred, dict):
            tensor = np.zeros((num_classes,) + gt.shape, np.float32)
            for k, v in pred.items():
                tensor[k + 1] = v
            tensor[0, :, :] = t
            pred = np.argmax(tensor, axis=0)
        cal = gt < 255
        mask = (pred == gt) * cal
        for c in range(num_classes):
            pp[c] += np.sum((pred == c) * cal)
            tt[c] += np.sum((gt == c) * cal)
            tp[c] += np.sum((gt == c) * mask)
    return tp, tt, pp


def reference_miou(tp: np.ndarray, tt: np.ndarray, pp: np.ndarray) -> float:
    """The reference mIoU (%) of per-class counts: IoU_c = TP / (T + P - TP + 1e-10), the mean
    over all len(tp) classes."""
    iou = [tp[c] / (tt[c] + pp[c] - tp[c] + 1e-10) for c in range(len(tp))]
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


def coco_counts(n: int) -> list[int]:
    """The image counts of the 81-class run: N/4, N/2 and N (distinct, at least 1)."""
    return sorted({max(1, n // 4), max(1, n // 2), n})


def measure_coco(folder: Path, n: int, workers: int, t_range: str) -> dict:
    """In this process (a fresh one): evaluate the first ``n`` images of ``folder`` with 81
    classes, the whole curve in one pass; seconds and peak-RSS growths (MB) of this process
    and of its largest pool worker, both over this process's resident set just before.

    This process's peak is ``VmHWM`` reset just before (``ru_maxrss`` would include the
    launching process's peak, inherited through exec). A worker's is its ``ru_maxrss``
    (``RUSAGE_CHILDREN``): its peak since its fork from this process, which starts at about
    this process's resident set (the memory it inherits)."""
    names = [coco_name(i) for i in range(n)]
    thr = ev.parse_t_range(t_range)
    used = min(max(int(workers), 1), n)  # as evaluation.accumulate
    # warm-up on one image, in this process: lazy imports and first-call costs are not the
    # evaluator's per-image memory or time
    ev.evaluate(names[:1], folder / "cams", folder / "gt", "npy", thr, 0,
                num_classes=COCO14.num_classes)
    reset_peak_rss()
    base = rss_kb()
    t0 = time.perf_counter()
    res = ev.evaluate(names, folder / "cams", folder / "gt", "npy", thr, workers,
                      num_classes=COCO14.num_classes)
    seconds = time.perf_counter() - t0
    worker_peak = maxrss_kb(resource.RUSAGE_CHILDREN) if used > 1 else None
    return {"images": n, "workers": used, "thresholds": len(thr), "seconds": seconds,
            "images_per_s": n / seconds, "base_rss_mb": base / MB,
            "peak_rss_growth_mb": max(0.0, peak_rss_kb() - base) / MB,
            "worker_peak_rss_growth_mb": (None if worker_peak is None
                                          else max(0.0, worker_peak - base) / MB),
            "best_miou": res.best_miou, "best_t": res.best_t,
            "classes_in_gt": int((res.confusion[0].sum(axis=1) > 0).sum())}


def bench_coco(n: int, size: tuple[int, int] = COCO_SIZE, workers: int | None = None,
               t_range: str = ev.DEFAULT_T_RANGE, seed: int = 0) -> dict:
    """Generate ``n`` COCO-sized images (not timed), then evaluate the first N/4, N/2 and N
    of them, each count in a fresh process (:func:`measure_coco`); print and return the
    rows and COCO val's projected time at the rate of N."""
    workers = ev.default_num_workers() if workers is None else int(workers)
    with tempfile.TemporaryDirectory(prefix="bench_eval_coco_") as tmp:
        folder = Path(tmp)
        print(f"eval: generating {n} COCO-sized images ({size[0]}x{size[1]}, 81 classes) ...",
              flush=True)
        t0 = time.perf_counter()
        nbytes = write_coco_case(folder, n, size, workers, seed)
        gen_s = time.perf_counter() - t0
        rows = []
        for count in coco_counts(n):
            cmd = [sys.executable, "-m", "tool.dev.bench_eval", "--coco_worker", str(folder),
                   "--coco_images", str(count), "--eval_workers", str(workers),
                   "--eval_t_range", t_range]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"the 81-class evaluation of {count} images failed:\n"
                                f"{proc.stderr[-2000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    last = rows[-1]
    projected = COCO_VAL_IMAGES / last["images_per_s"]
    res = {"size": list(size), "generated": n, "generate_s": gen_s, "disk_mb": nbytes / 2 ** 20,
           "workers": last["workers"], "thresholds": last["thresholds"], "runs": rows,
           "images_per_s": last["images_per_s"], "coco_val_images": COCO_VAL_IMAGES,
           "projected_coco_val_s": projected}

    def mb(v: float | None) -> str | float:
        return "-" if v is None else v

    procs = "1 process" if last["workers"] == 1 else f"{last['workers']} worker processes"
    print_table(f"eval, 81 classes: {size[0]}x{size[1]} images x {last['thresholds']} "
                f"thresholds in one pass, {procs} (MB: peak RSS growth over the evaluating "
                f"process's RSS before; flat in the image count = bounded memory)",
                ["images", "seconds", "images/s", "process MB", "largest worker MB",
                 "best mIoU %"],
                [[r["images"], r["seconds"], r["images_per_s"], r["peak_rss_growth_mb"],
                  mb(r["worker_peak_rss_growth_mb"]), r["best_miou"]] for r in rows])
    print(f"generation (not timed): {gen_s:.1f} s, {res['disk_mb']:.0f} MB; projected for COCO "
          f"val ({COCO_VAL_IMAGES:,} images) at {last['images_per_s']:.1f} images/s: "
          f"{projected / 60:.1f} min")
    return res


def run(args: argparse.Namespace) -> dict:
    if args.eval_coco_images < 0:
        raise UserError(f"--eval_coco_images must be >= 0, got {args.eval_coco_images}")
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
        res = _measure(names, tmp / "cams", gt_dir, args)
    if args.eval_coco_images:
        res["coco"] = bench_coco(args.eval_coco_images, args.eval_coco_size, args.eval_workers,
                                 args.eval_t_range)
    return res


def main(argv: list[str] | None = None) -> None:
    """``python -m tool.dev.bench_eval``: the section alone (``--coco_worker DIR``: one
    81-class measurement, its numbers as a JSON line)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc12_root", default="data/toy_voc")
    ap.add_argument("--coco_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--coco_images", type=int, default=None, help=argparse.SUPPRESS)
    add_args(ap.add_argument_group("eval"))
    args = ap.parse_args(argv)
    if args.coco_worker is None:
        run(args)
        return
    print(json.dumps(measure_coco(Path(args.coco_worker), args.coco_images, args.eval_workers,
                                  args.eval_t_range)))


if __name__ == "__main__":
    cli_main(main)
