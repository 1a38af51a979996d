"""Benchmark: the released CRF loop (21 labels, one image after another) against ours (background
+ present classes, ``CRFPool`` worker processes), on realistic batches.

    python -m tool.dev.bench_crf [--batch 4] [--size 448] [--workers 2] [--repeats 3] \
        [--layout train] [--images toy,photo]

Image sources (``--images``): ``toy``, the toy VOC set's own textured images resized to 448 px
with CAM-like maps made from their masks; ``photo``, crops of a real photograph that a pinned
package ships (matplotlib's ``grace_hopper.jpg``); ``smooth``, synthetic smooth colour fields
(what this bench used before 2026-11-29: their bilateral lattice has far fewer occupied vertices
than a photo's, which flatters every variant). Every batch draws its images' class counts
from VOC's distribution. ``--layout train`` reproduces the training call: N own maps plus N
partner maps over the same N images (the partner batch is a permutation of the own batch).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch

from data.voc import NUM_CLASSES, image_path, load_image, load_img_name_list, load_mask
from tool.cam.plmix import pseudo_label_maps
from tool.common.workers import shutdown_pool, worker_pool
from tool.crf import CRFParams, CRFPool, crf_labels, crf_labels_full

# How many classes an image has, as on VOC train_aug (1-6 per image, mean 1.56: METHOD.md 1.2);
# the CRF's cost depends on it through the number of labels it keeps.
CLASS_COUNT_P = (0.62, 0.25, 0.09, 0.04)
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (H, W, 3) uint8, maps, class ids


def _texture(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random colour field (size, size, 3): a coarse grid upsampled bicubically."""
    coarse = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _class_count(rng: np.random.Generator) -> int:
    return int(rng.choice(len(CLASS_COUNT_P), p=CLASS_COUNT_P)) + 1


def _ellipses(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-2 random filled ellipses: bool (size, size)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        ry, rx = rng.uniform(0.08, 0.25, 2) * size
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def cam_like_maps(rng: np.random.Generator, masks: dict[int, np.ndarray], T: float = 0.3
                  ) -> np.ndarray:
    """CAM-like maps for the object ``masks`` {class id: bool (H, W)}: each class peaks on a
    shifted, blurred copy of its mask, plus smooth noise; low noise everywhere. Returns the
    float16 M (21, H, W) of the pseudo labels (METHOD.md 5.5 step 4, channel 0 = T)."""
    h, w = next(iter(masks.values())).shape
    raw = np.abs(rng.normal(0, 0.05, (NUM_CLASSES, h, w))).astype(np.float32)
    for c, mask in masks.items():
        dy, dx = (rng.normal(0, 0.04, 2) * (h, w)).astype(int)
        peak = cv2.GaussianBlur(np.roll(mask.astype(np.float32), (dy, dx), axis=(0, 1)),
                                (0, 0), max(h, w) / 25)
        raw[c] += peak / max(float(peak.max()), 1e-6) * rng.uniform(0.6, 1.0)
        raw[c] += cv2.GaussianBlur(rng.normal(0, 0.08, (h, w)).astype(np.float32), (0, 0),
                                   max(h, w) / 40)
    label_bg = torch.zeros(1, NUM_CLASSES)
    label_bg[0, [0, *masks]] = 1
    return pseudo_label_maps(torch.from_numpy(raw)[None], label_bg, T)[0].numpy()


def smooth_sample(rng: np.random.Generator, size: int) -> Sample:
    """Synthetic: textured elliptic objects of 1-4 classes on a smooth colour field."""
    img = 110 + _texture(rng, size, 6, 40) + _texture(rng, size, 40, 12)
    classes = np.sort(rng.choice(np.arange(1, NUM_CLASSES), _class_count(rng), replace=False))
    masks = {int(c): _ellipses(rng, size) for c in classes}
    for mask in masks.values():
        img[mask] = (rng.uniform(0, 255, 3) + _texture(rng, size, 24, 25))[mask]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), cam_like_maps(rng, masks), classes


def toy_samples(rng: np.random.Generator, size: int, n: int, voc12_root: str | Path
                ) -> list[Sample]:
    """``n`` toy VOC images (``train.txt``, which has masks) resized to size x size; each keeps
    a VOC-drawn number of its mask's classes (as many as it has, at most)."""
    root = Path(voc12_root)
    names = load_img_name_list(root / "ImageSets/Segmentation/train.txt")
    out = []
    for name in rng.permutation(names)[:n]:
        img = np.asarray(load_image(image_path(root, name)).convert("RGB"))
        gt = load_mask(root / "SegmentationClass" / f"{name}.png")
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        gt = cv2.resize(gt, (size, size), interpolation=cv2.INTER_NEAREST)
        present = [c for c in np.unique(gt) if 0 < c < NUM_CLASSES]
        classes = np.sort(rng.permutation(present)[:_class_count(rng)])
        masks = {int(c): gt == c for c in classes}
        out.append((img, cam_like_maps(rng, masks), classes))
    return out


def photo_samples(rng: np.random.Generator, size: int, n: int) -> list[Sample]:
    """``n`` random square crops (60-100 % of the short side) of a real photograph resized to
    size x size, with CAM-like maps of 1-4 classes on random ellipses."""
    photo = np.asarray(load_image(PHOTO).convert("RGB"))
    short = min(photo.shape[:2])
    out = []
    for _ in range(n):
        side = int(short * rng.uniform(0.6, 1.0))
        y, x = (rng.integers(0, d - side + 1) for d in photo.shape[:2])
        img = cv2.resize(photo[y:y + side, x:x + side], (size, size),
                         interpolation=cv2.INTER_AREA)
        classes = np.sort(rng.choice(np.arange(1, NUM_CLASSES), _class_count(rng),
                                     replace=False))
        masks = {int(c): _ellipses(rng, size) for c in classes}
        out.append((np.ascontiguousarray(img), cam_like_maps(rng, masks), classes))
    return out


def make_batch(source: str, batch: int, size: int, seed: int = 0, layout: str = "batch",
               voc12_root: str | Path = "data/toy_voc"
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """images (B, H, W, 3) uint8, maps (B, 21, H, W) float16, presents; B = batch, or 2 * batch
    for layout "train" (own maps, then partner maps on the permuted images)."""
    rng = np.random.default_rng(seed)
    if source == "toy":
        samples = toy_samples(rng, size, batch, voc12_root)
    elif source == "photo":
        samples = photo_samples(rng, size, batch)
    elif source == "smooth":
        samples = [smooth_sample(rng, size) for _ in range(batch)]
    else:
        raise ValueError(f"unknown image source {source!r}; expected toy, photo or smooth")
    if layout == "train":
        partners = []
        for i in rng.permutation(batch):
            img, m16, classes = samples[i]
            # another map for the same image and classes (stands for the partner's SGC)
            m16 = m16.copy()
            m16[classes] = np.roll(m16[classes], (size // 20, -size // 15), axis=(1, 2))
            partners.append((img, m16, classes))
        samples = samples + partners
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


def concurrency_ceiling(image: np.ndarray, maps: np.ndarray, present: np.ndarray,
                        params: CRFParams, workers: int, repeats: int) -> float:
    """What ``workers`` cores give this machine for this CRF at best: one image's reduced CRF
    run alone in a worker process, then the same job in all ``workers`` at once (no data
    shared, nothing to balance); returns workers x alone / together. A pool of independent
    jobs cannot scale beyond it (memory bandwidth and shared caches are the limit, not the
    pool). image (H, W, 3) uint8, maps (21, H, W)."""
    job = (image, maps, present, params)
    ex = worker_pool(workers)
    try:
        def together() -> list:
            return list(ex.map(crf_labels, *([x] * workers for x in job)))

        together()  # start every worker
        alone, _, _ = _best_time(lambda: ex.submit(crf_labels, *job).result(), repeats)
        both, _, _ = _best_time(together, repeats)
    finally:
        shutdown_pool(ex)
    return workers * alone / both


def bench_crf(batch: int = 4, size: int = 448, workers: tuple[int, ...] = (2,),
              repeats: int = 3, layout: str = "batch",
              absents: tuple[str, ...] = ("merge", "drop"), seed: int = 0,
              source: str = "toy", voc12_root: str | Path = "data/toy_voc") -> dict:
    """Time the released loop and our CRF (for each way of treating the absent labels) on the
    same batch of ``source`` images, best of ``repeats``; print and return seconds per batch,
    speed-ups and the share of pixels where the labels agree with the released ones.

    "merge" keeps one label for all absent classes (exact); "drop" leaves them out (what a
    plain label reduction does: faster, a few pixels in a thousand change). Ours runs in this
    process (``serial``: the gain of the label reduction alone, and the per-core cost) and in a
    pool of each of ``workers`` processes (``pool_scaling``: in-process time over pool time).
    ``cpu`` are CPU seconds of this process, which other load disturbs less than wall time.
    """
    images, maps, presents = make_batch(source, batch, size, seed, layout, voc12_root)
    t_rel, c_rel, lab_rel = _best_time(
        lambda: np.stack([crf_labels_full(im, m) for im, m in zip(images, maps)]), repeats)
    res = {"source": source, "batch": batch, "size": size, "layout": layout,
           "maps": len(maps), "labels_per_map": [len(p) + 1 for p in presents],
           "released_s": t_rel, "released_cpu_s": c_rel,
           "released_cpu_s_per_map": c_rel / len(maps)}
    print(f"{source}: {len(maps)} maps of {size}x{size} ({layout} layout), labels per map "
          f"{res['labels_per_map']}\n  released 21-label loop: {t_rel:.3f} s/batch "
          f"(cpu {c_rel / len(maps):.3f} s per map)")
    for absent in absents:
        def ours(p: CRFPool, a: str = absent) -> np.ndarray:
            return p.map(images, maps, presents, CRFParams(reduced=True, absent=a))

        t_ser, c_ser, lab = _best_time(lambda: ours(CRFPool(0)), repeats)
        r = {"serial_s": t_ser, "serial_cpu_s": c_ser, "serial_speedup": t_rel / t_ser,
             "reduction_gain_cpu": c_rel / c_ser,
             "agreement": float((lab_rel == lab).mean()), "pool": {}}
        line = (f"  absent={absent:<5} in-process {t_ser:.3f} s ({t_rel / t_ser:.2f}x, "
                f"cpu {c_ser / len(maps):.3f} s per map), agreement {r['agreement']:.6f}")
        for w in workers:
            with CRFPool(w) as pool:
                pool.warmup()
                t_pool, _, lab_pool = _best_time(lambda: ours(pool), repeats)
            if not np.array_equal(lab_pool, lab):
                raise AssertionError(f"the {w}-worker pool's labels differ from in-process")
            ceiling = concurrency_ceiling(images[0], maps[0], presents[0],
                                          CRFParams(reduced=True, absent=absent), w, repeats)
            r["pool"][w] = {"s": t_pool, "speedup": t_rel / t_pool,
                            "pool_scaling": t_ser / t_pool, "machine_ceiling": ceiling}
            line += (f"; {w} workers {t_pool:.3f} s: {t_rel / t_pool:.2f}x the released "
                     f"loop, {t_ser / t_pool:.2f}x in-process (the machine's ceiling for "
                     f"{w} independent copies of one job: {ceiling:.2f}x)")
        res[absent] = r
        print(line)
    return res


def add_args(group: argparse._ArgumentGroup) -> None:
    """Options of the ``crf`` section of ``python -m tool.dev.bench``."""
    group.add_argument("--crf_batch", type=int, default=4)
    group.add_argument("--crf_size", type=int, default=448)
    group.add_argument("--crf_workers", default="2",
                       help="comma-separated pool sizes besides in-process (a larger machine: "
                            "2,4,<cores>)")
    group.add_argument("--crf_repeats", type=int, default=3)
    group.add_argument("--crf_layout", choices=("batch", "train"), default="train",
                       help="train: the training step's call (own + partner maps)")
    group.add_argument("--crf_absent", default="merge,drop",
                       help="comma-separated: merge (exact, the default in training), drop")
    group.add_argument("--crf_images", default="toy,photo",
                       help="comma-separated image sources: toy, photo, smooth")


def run(args: argparse.Namespace) -> dict:
    workers = tuple(int(w) for w in args.crf_workers.split(","))
    return {src: bench_crf(args.crf_batch, args.crf_size, workers, args.crf_repeats,
                           args.crf_layout, tuple(args.crf_absent.split(",")), source=src,
                           voc12_root=getattr(args, "voc12_root", "data/toy_voc"))
            for src in args.crf_images.split(",")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc12_root", default="data/toy_voc")
    add_args(ap.add_argument_group("crf"))
    run(ap.parse_args())


if __name__ == "__main__":
    main()
