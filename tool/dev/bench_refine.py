"""Benchmark section ``refine``: the stage-2 random walk of one VOC-sized image with the dense
(reference) and the sparse engine side by side (METHOD.md 13.6.7).

    python -m tool.dev.bench_refine [--refine_size 375,500] [--refine_engines dense,sparse]

Each engine runs in a fresh process, so its peak memory is its own: the process reports the
growth of its peak resident set (``ru_maxrss``) over its resident set just before the walk
(torch's allocations are invisible to tracemalloc). The timed call is ``refine_cams`` with a
fixed synthetic edge map standing in for IRNet: CAM resize, affinities, walk, upsampling and
argmax; the network is not part of it. The labels of all engines must be identical.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tool.common.errors import UserError, cli_main
from tool.dev.bench import hw_arg, maxrss_kb, print_table, rss_kb
from tool.irn.path_index import PathIndex
from tool.irn.random_walk import refine_cams

ROOT = Path(__file__).resolve().parents[2]
MB = 2 ** 20


class FixedEdge:
    """Stands in for IRNet: ``edge_displacement`` returns a fixed edge map (1, h, w)."""

    def __init__(self, edge: torch.Tensor) -> None:
        self.edge = edge

    def edge_displacement(self, x_pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.edge, x_pair.new_zeros(2, *self.edge.shape[1:])


def synthetic_case(size: tuple[int, int], n_classes: int = 3, seed: int = 0
                   ) -> tuple[torch.Tensor, dict[int, np.ndarray]]:
    """A VOC-like image of ``size`` (H, W) with ``n_classes`` elliptic objects: the edge map
    (1, ceil(H/4), ceil(W/4)), high on the object outlines, and the hand-off CAM dict
    {key: float32 (H, W)}, smooth peaks shifted off the objects' centres, min-max normalised."""
    H, W = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    keys = sorted(int(k) for k in rng.choice(20, n_classes, replace=False))
    outline = np.zeros((H, W), np.float32)
    cam_dict = {}
    for k in keys:
        cy, cx = rng.uniform(0.25, 0.75, 2) * (H, W)
        ry, rx = rng.uniform(0.12, 0.3, 2) * (H, W)
        rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)  # 1 on the outline
        outline = np.maximum(outline, np.exp(-((rho - 1) * min(ry, rx) / 5) ** 2))
        oy, ox = rng.normal(0, 0.2, 2) * (ry, rx)  # CAMs peak off-centre
        cam = np.exp(-1.5 * (((yy - cy - oy) / ry) ** 2 + ((xx - cx - ox) / rx) ** 2))
        cam += rng.uniform(0, 0.03, (H, W)).astype(np.float32)
        cam_dict[k] = ((cam - cam.min()) / (cam.max() - cam.min() + 1e-6)).astype(np.float32)
    edge = 0.02 + 0.9 * outline[::4, ::4] + rng.uniform(0, 0.05, outline[::4, ::4].shape)
    return torch.from_numpy(edge.astype(np.float32))[None], cam_dict


def analytic_mb(size: tuple[int, int], channels: int, engine: str, radius: int = 5) -> float:
    """MB of the walk's largest tensors alive at one time, counted from their shapes.

    Both engines hold the path index of the padded grid (int64). On top of it, ``dense`` holds
    two (hw)^2 float32 matrices while squaring; ``sparse`` holds the CSR transition matrix (a
    float32 value and an int64 column per entry: both orientations of every in-image pair,
    plus the diagonal) and three (C, hw) float32 buffers.
    """
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    n = h * w
    index = PathIndex(radius, (h + radius, w + 2 * radius))
    total = sum(a.nbytes for a in [*index.path_indices, index.src_indices, index.dst_indices])
    if engine == "dense":
        return (total + 2 * n * n * 4) / MB
    pairs = sum(max(0, h - dy) * max(0, w - abs(dx)) for dy, dx in index.search_dst.tolist())
    nnz = 2 * pairs + n
    return (total + nnz * (4 + 8) + (n + 1) * 8 + 3 * channels * n * 4) / MB


def measure(engine: str, size: tuple[int, int], classes: int, beta: float, exp_times: int,
            radius: int, repeats: int, present_only: bool, seed: int = 0
            ) -> tuple[dict, np.ndarray]:
    """In this process: seconds per image (best of ``repeats``) and peak-RSS growth of one
    engine; returns (numbers, label)."""
    def once(edge: torch.Tensor, cams: dict, hw: tuple[int, int]) -> np.ndarray:
        img_pair = torch.zeros(2, 3, *hw)
        return refine_cams(FixedEdge(edge), img_pair, cams, beta, exp_times, 0.35, radius,
                           engine=engine, present_only=present_only)[0]

    once(*synthetic_case((40, 48), classes, seed), (40, 48))  # warm-up: kernels, thread pool
    edge, cams = synthetic_case(size, classes, seed)
    base = rss_kb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        label = once(edge, cams, size)
        times.append(time.perf_counter() - t0)
    channels = classes if present_only else 20
    return {"seconds": min(times), "peak_rss_growth_mb": max(0.0, maxrss_kb() - base) / 1024,
            "analytic_mb": analytic_mb(size, channels, engine, radius), "channels": channels,
            "threads": torch.get_num_threads()}, label


def bench_refine(size: tuple[int, int] = (375, 500), classes: int = 3, beta: float = 8,
                 exp_times: int = 6, radius: int = 5, engines: tuple[str, ...] = ("dense",
                                                                                    "sparse"),
                 repeats: int = 1, present_only: bool = False, seed: int = 0) -> dict:
    """Run each engine in its own process on the same synthetic image; print and return the
    seconds per image, the memory, the speed-up of each engine over the first, and whether the
    labels are identical (a UserError if not)."""
    flags = ["--refine_size", f"{size[0]},{size[1]}", "--refine_classes", str(classes),
             "--refine_beta", str(beta), "--refine_exp_times", str(exp_times),
             "--refine_radius", str(radius), "--refine_repeats", str(repeats),
             "--refine_seed", str(seed)] + (["--refine_present_only"] if present_only else [])
    res: dict = {"size": list(size), "classes": classes, "beta": beta, "exp_times": exp_times,
                 "radius": radius, "present_only": present_only}
    labels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            out = Path(tmp) / f"{engine}.npy"
            cmd = [sys.executable, "-m", "tool.dev.bench_refine", "--worker", engine,
                   "--worker_out", str(out), *flags]
            print(f"refine: {engine} engine at {size[0]}x{size[1]} ...", flush=True)
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"the {engine} refine benchmark failed:\n{proc.stderr[-2000:]}")
            res[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
            labels[engine] = np.load(out)
    first = engines[0]
    res["identical"] = all(np.array_equal(labels[first], labels[e]) for e in engines)
    rows = []
    for e in engines:
        r = res[e]
        r["speedup"] = res[first]["seconds"] / r["seconds"]
        rows.append([e, r["channels"], r["threads"], r["seconds"], r["speedup"],
                     r["peak_rss_growth_mb"], r["analytic_mb"]])
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    print_table(f"random walk, {size[0]}x{size[1]} image ({h}x{w} grid), {classes} classes, "
                f"radius {radius}, beta {beta}, {2 ** exp_times} steps",
                ["engine", "channels", "threads", "s/image", f"speed-up vs {first}",
                 "peak RSS growth MB", "analytic MB"], rows)
    print(f"labels identical: {res['identical']}")
    if not res["identical"]:
        diff = {e: int((labels[e] != labels[first]).sum()) for e in engines}
        raise UserError(f"the engines' labels differ (pixels differing from {first}: {diff})")
    return res


def add_args(group: argparse._ArgumentGroup) -> None:
    """Options of the ``refine`` section of ``python -m tool.dev.bench``."""
    group.add_argument("--refine_size", type=hw_arg, default=(375, 500), metavar="H,W",
                       help="image size; the walk runs on its stride-4 grid (default 375,500)")
    group.add_argument("--refine_classes", type=int, default=3)
    group.add_argument("--refine_beta", type=float, default=8)
    group.add_argument("--refine_exp_times", type=int, default=6)
    group.add_argument("--refine_radius", type=int, default=5)
    group.add_argument("--refine_engines", default="dense,sparse",
                       help="comma-separated; the speed-up is against the first")
    group.add_argument("--refine_repeats", type=int, default=1)
    group.add_argument("--refine_present_only", action="store_true",
                       help="propagate only the present classes (default: all 20 channels)")
    group.add_argument("--refine_seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    return bench_refine(args.refine_size, args.refine_classes, args.refine_beta,
                        args.refine_exp_times, args.refine_radius,
                        tuple(e.strip() for e in args.refine_engines.split(",") if e.strip()),
                        args.refine_repeats, args.refine_present_only, args.refine_seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)
    add_args(ap.add_argument_group("refine"))
    args = ap.parse_args(argv)
    if args.worker is None:
        run(args)
        return
    numbers, label = measure(args.worker, args.refine_size, args.refine_classes,
                             args.refine_beta, args.refine_exp_times, args.refine_radius,
                             args.refine_repeats, args.refine_present_only, args.refine_seed)
    np.save(args.worker_out, label)
    print(json.dumps(numbers))


if __name__ == "__main__":
    cli_main(main)
