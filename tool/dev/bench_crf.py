"""Benchmark: the released CRF loop (21 labels, one image after another) against ours (background
+ present classes, ``CRFPool`` worker processes), on a synthetic but realistic batch.

    python -m tool.dev.bench_crf [--batch 4] [--size 448] [--workers 2] [--repeats 3] \
        [--layout train]

``--layout train`` reproduces the training call: N own maps plus N partner maps over the same N
images (the partner batch is a permutation of the own batch).
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from data.voc import NUM_CLASSES
from tool.cam.plmix import pseudo_label_maps
from tool.crf import CRFParams, CRFPool, crf_labels_full

# How many classes an image has, as on VOC train_aug (1-6 per image, mean 1.56: METHOD.md 1.2);
# the CRF's cost depends on it through the number of labels it keeps.
CLASS_COUNT_P = (0.62, 0.25, 0.09, 0.04)


def _texture(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random colour field (size, size, 3): a coarse grid upsampled bicubically."""
    coarse = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def synthetic_sample(rng: np.random.Generator, size: int, T: float = 0.3
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 with 1-3 classes of textured elliptic objects on a textured
    background, float16 M (21, H, W) from CAM-like maps (METHOD.md 5.5 step 4, channel 0 = T), and
    the present class ids."""
    img = 110 + _texture(rng, size, 6, 40) + _texture(rng, size, 40, 12)
    n_classes = rng.choice(len(CLASS_COUNT_P), p=CLASS_COUNT_P) + 1
    classes = np.sort(rng.choice(np.arange(1, NUM_CLASSES), size=n_classes, replace=False))
    # low noise in every channel; label_bg below masks the absent classes
    raw = np.abs(rng.normal(0, 0.05, (NUM_CLASSES, size, size))).astype(np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for c in classes:
        colour = rng.uniform(0, 255, 3)
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            ry, rx = rng.uniform(0.08, 0.25, 2) * size
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img[inside] = (colour + _texture(rng, size, 24, 25))[inside]
            # CAM-like: peaked on a shifted, shrunk copy of the object, smooth, a bit noisy
            oy, ox = rng.normal(0, 0.15, 2) * (ry, rx)
            peak = np.exp(-(((yy - cy - oy) / ry) ** 2 + ((xx - cx - ox) / rx) ** 2) * 1.5)
            raw[c] += peak * rng.uniform(0.6, 1.0)
        raw[c] += cv2.GaussianBlur(rng.normal(0, 0.08, (size, size)).astype(np.float32),
                                   (0, 0), size / 40)
    img += rng.normal(0, 6, img.shape)
    label_bg = torch.zeros(1, NUM_CLASSES)
    label_bg[0, 0] = 1
    label_bg[0, classes] = 1
    m16 = pseudo_label_maps(torch.from_numpy(raw)[None], label_bg, T)[0].numpy()
    return np.clip(img, 0, 255).astype(np.uint8), m16, classes


def synthetic_batch(batch: int, size: int, seed: int = 0, layout: str = "batch"
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """images (B, H, W, 3) uint8, maps (B, 21, H, W) float16, presents; B = batch, or 2 * batch
    for layout "train" (own maps, then partner maps on the permuted images)."""
    rng = np.random.default_rng(seed)
    samples = [synthetic_sample(rng, size) for _ in range(batch)]
    if layout == "train":
        perm = rng.permutation(batch)
        partners = []
        for i in perm:
            img, m16, classes = samples[i]
            # another map for the same image and classes (stands for the partner's SGC)
            m16 = m16.copy()
            m16[classes] = np.roll(m16[classes], (size // 20, -size // 15), axis=(1, 2))
            partners.append((img, m16, classes))
        samples += partners
    images, maps, presents = zip(*samples)
    return np.stack(images), np.stack(maps), list(presents)


def _best_time(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall and best CPU (this process) seconds of ``fn()`` over ``repeats``, its output."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def bench_crf(batch: int = 4, size: int = 448, workers: int = 2, repeats: int = 3,
              layout: str = "batch", absents: tuple[str, ...] = ("merge", "drop"),
              seed: int = 0) -> dict:
    """Time the released loop and our CRF (for each way of treating the absent labels) on the
    same synthetic batch, best of ``repeats``; print and return seconds per batch, speed-ups
    and the share of pixels where the labels agree with the released ones.

    "merge" keeps one label for all absent classes (exact); "drop" leaves them out (what a
    plain label reduction does: faster, a few pixels in a thousand change). Also timed: ours in
    this process (``serial``), which separates the gain of the label reduction from that of the
    pool; ``cpu`` are CPU seconds of this process, which other load disturbs less than wall time.
    """
    images, maps, presents = synthetic_batch(batch, size, seed, layout)
    t_rel, c_rel, lab_rel = _best_time(
        lambda: np.stack([crf_labels_full(im, m) for im, m in zip(images, maps)]), repeats)
    res = {"batch": batch, "size": size, "workers": workers, "layout": layout,
           "maps": len(maps), "labels_per_map": [len(p) + 1 for p in presents],
           "released_s": t_rel, "released_cpu_s": c_rel}
    print(f"{len(maps)} maps of {size}x{size} ({layout} layout), labels per map "
          f"{res['labels_per_map']}\n  released 21-label loop : {t_rel:.3f} s/batch "
          f"(cpu {c_rel:.3f})")
    with CRFPool(workers) as pool:
        pool.warmup()
        for absent in absents:
            def ours(p: CRFPool, a: str = absent) -> np.ndarray:
                return p.map(images, maps, presents, CRFParams(reduced=True, absent=a))

            t_ser, c_ser, _ = _best_time(lambda: ours(CRFPool(0)), repeats)
            t_ours, _, lab = _best_time(lambda: ours(pool), repeats)
            r = {"ours_s": t_ours, "speedup": t_rel / t_ours,
                 "agreement": float((lab_rel == lab).mean()), "serial_s": t_ser,
                 "serial_cpu_s": c_ser, "reduction_gain_cpu": c_rel / c_ser}
            res[absent] = r
            print(f"  absent={absent:<5} in-process {t_ser:.3f} s (cpu gain "
                  f"{r['reduction_gain_cpu']:.2f}x), {workers} workers {t_ours:.3f} s/batch: "
                  f"speed-up {r['speedup']:.2f}x, agreement {r['agreement']:.6f}")
    return res


def add_args(group: argparse._ArgumentGroup) -> None:
    """Options of the ``crf`` section of ``python -m tool.dev.bench``."""
    group.add_argument("--crf_batch", type=int, default=4)
    group.add_argument("--crf_size", type=int, default=448)
    group.add_argument("--crf_workers", type=int, default=2)
    group.add_argument("--crf_repeats", type=int, default=3)
    group.add_argument("--crf_layout", choices=("batch", "train"), default="train",
                       help="train: the training step's call (own + partner maps)")
    group.add_argument("--crf_absent", default="merge,drop",
                       help="comma-separated: merge (exact, the default in training), drop")


def run(args: argparse.Namespace) -> dict:
    return bench_crf(args.crf_batch, args.crf_size, args.crf_workers, args.crf_repeats,
                     args.crf_layout, tuple(args.crf_absent.split(",")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap.add_argument_group("crf"))
    run(ap.parse_args())


if __name__ == "__main__":
    main()
