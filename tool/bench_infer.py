"""Benchmark section ``infer``: images/s of multi-scale + flip inference (forward, resize, sum,
min-max, npy) in one process and sharded over ``--infer_procs`` torchrun processes."""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tool.bench import print_table, torchrun_workers, worker_main


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--infer_config", default="configs/toy.yaml")
    group.add_argument("--infer_procs", type=int, default=2,
                       help="processes of the sharded run (0 = skip it)")


def measure(config: str, voc12_root: str) -> dict:
    """Images this process inferred (its shard under torchrun) and the seconds it took."""
    from tool import infer
    from tool.bench_train import setup

    with tempfile.TemporaryDirectory() as tmp:
        cfg, _, model, _ = setup(config, voc12_root, ["--out_npy", tmp])
        t0 = time.perf_counter()
        n = infer.run(cfg, model, cfg.camT)
        return {"images": n, "seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> dict:
    single = measure(args.infer_config, args.voc12_root)
    rows = [["1 process", single["images"], single["seconds"],
             single["images"] / single["seconds"]]]
    res = {"images_per_s": rows[0][-1]}
    if args.infer_procs > 1:
        ranks = torchrun_workers("tool.bench_infer", args.infer_procs, [
            "--infer_config", args.infer_config, "--voc12_root", args.voc12_root])
        n, s = sum(r["images"] for r in ranks), max(r["seconds"] for r in ranks)
        rows.append([f"{args.infer_procs} processes (sharded)", n, s, n / s])
        res[f"images_per_s_{args.infer_procs}procs"] = n / s
    print_table(f"inference, {args.infer_config} ({torch.get_num_threads()} threads in 1 "
                "process; sharded: slowest rank, process start-up excluded)",
                ["run", "images", "seconds", "images/s"], rows)
    return res


if __name__ == "__main__":
    worker_main(add_args, lambda a: measure(a.infer_config, a.voc12_root))
