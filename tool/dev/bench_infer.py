"""Benchmark section ``infer``: images/s of multi-scale + flip inference (forward, resize, sum,
min-max, npy) in one process and sharded over ``--infer_procs`` torchrun processes."""
from __future__ import annotations

import argparse
import tempfile
import time

from tool.dev.bench import print_table, torchrun_workers, worker_main


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--infer_config", default="configs/toy.yaml")
    group.add_argument("--infer_procs", type=int, default=2,
                       help="processes of the sharded run (0 = skip it)")


def measure(config: str, voc12_root: str) -> dict:
    """Images this process inferred (its shard under torchrun) and the seconds it took."""
    from tool.cam import infer
    from tool.dev.bench_train import setup

    with tempfile.TemporaryDirectory() as tmp:
        cfg, _, model, _ = setup(config, voc12_root, {"out_npy": tmp})
        t0 = time.perf_counter()
        n = infer.run(cfg, model, cfg.camT)
        return {"images": n, "seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> dict:
    """images/s in one process on all cores, in one process on a 1/N share of the cores, and
    sharded over N processes (the slowest rank's time; process start-up excluded)."""
    procs = args.infer_procs
    runs = {"1 process": [measure(args.infer_config, args.voc12_root)]}
    if procs > 1:
        flags = ["--infer_config", args.infer_config, "--voc12_root", args.voc12_root]
        runs["1 process, 1/N cores"] = torchrun_workers("tool.dev.bench_infer", 1, flags,
                                                        share=procs)
        runs[f"{procs} processes (sharded)"] = torchrun_workers("tool.dev.bench_infer", procs,
                                                                flags)
    rows, res = [], {}
    for name, ranks in runs.items():
        n, s = sum(r["images"] for r in ranks), max(r["seconds"] for r in ranks)
        res[f"images_per_s ({name})"] = n / s
        rows.append([name, n, s, n / s])
    print_table(f"inference, {args.infer_config} (N = {procs})",
                ["run", "images", "seconds", "images/s"], rows)
    return res


if __name__ == "__main__":
    worker_main(add_args, lambda a: measure(a.infer_config, a.voc12_root))
