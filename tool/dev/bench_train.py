"""Benchmark section ``train``: images/s of the training step in each schedule phase, in one
process and in ``--train_procs`` DDP processes (torchrun, Gloo on CPU / NCCL on CUDA), on a
config's data (the toy config by default)."""
from __future__ import annotations

import argparse
import time
from itertools import cycle, islice
from typing import Any

import torch

from tool.common.config import TRAIN_SECTIONS, resolve_config
from tool.common.dist import barrier, init_distributed, local_device, rank_world, wrap_ddp
from tool.common.runtime import epoch_generators, resolve_device
from tool.crf import CRFPool
from tool.dev.bench import print_table, torchrun_workers, worker_main

# (label, epoch attribute at which the phase starts, overrides)
PHASES = (("main pass (MCL)", None, {"plmix": False}),
          ("+ PL-Mix branch", "mix_start", {"plmix": True}),
          ("+ augmentation", "aug_start", {}),
          ("+ views, PixPro", "pixpro_start", {}),
          ("+ EMD (full step)", "emd_start", {}))


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--train_config", default="configs/toy.yaml")
    group.add_argument("--train_iters", type=int, default=5, help="timed iterations per phase")
    group.add_argument("--train_procs", type=int, default=2,
                       help="DDP processes of the second column (0 = skip it)")


def setup(config: str, voc12_root: str, overrides: dict[str, Any] | None = None):
    """(config namespace, device, model, (train set, val set)) with a fixed random init."""
    from tool.cam.build import build_loaders, build_model

    cfg = resolve_config(config, TRAIN_SECTIONS + ["infer"],
                         {"voc12_root": voc12_root, **(overrides or {})})
    device = local_device(resolve_device(cfg.device))
    torch.manual_seed(0)
    return cfg, device, build_model(cfg, device), build_loaders(cfg)


def measure(config: str, voc12_root: str, iters: int,
            overrides: dict[str, Any] | None = None) -> dict:
    """Seconds per iteration of every phase; under torchrun, of the DDP step on each rank's own
    data (all ranks step together: the gradient all-reduce synchronises them)."""
    from tool.cam.build import epoch_loader
    from tool.cam.step import StepContext, TrainLosses, train_step

    cfg, device, net, (train_ds, _) = setup(config, voc12_root, overrides)
    init_distributed(device)  # under torchrun; nothing otherwise
    model = wrap_ddp(TrainLosses(net))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # a small data set's batches are reused: the timings do not depend on the pixels
    batches = list(islice(cycle(epoch_loader(train_ds, cfg, 0)), iters + 1))
    res = {}
    with CRFPool(cfg.crf_workers if cfg.crf else 0) as pool:
        for label, start, over in PHASES:
            for k, v in over.items():
                setattr(cfg, k, v)
            ep = 0 if start is None else getattr(cfg, start)
            ctx = StepContext(cfg, ep, cfg.camT, *epoch_generators(0, ep, rank_world()[0]), pool)
            train_step(model, opt, batches[0], ctx, device)  # warm-up
            barrier()
            t0 = time.perf_counter()
            for b in batches[1:]:
                train_step(model, opt, b, ctx, device)
            barrier()
            res[label] = {"from_epoch": ep, "s_per_iter": (time.perf_counter() - t0) / iters,
                          "batch": cfg.batch_size}
    return res


def run(args: argparse.Namespace) -> dict:
    """images/s per phase: one process on all cores; one process on a 1/N share of the cores;
    N DDP processes. The last two give DDP's parallel efficiency."""
    procs = args.train_procs
    cols = {"1 process": (1, measure(args.train_config, args.voc12_root, args.train_iters))}
    if procs > 1:  # each process gets its share of the cores, CRF included
        flags = ["--train_config", args.train_config, "--voc12_root", args.voc12_root,
                 "--train_iters", str(args.train_iters)]
        cols["1 process, 1/N cores"] = (
            1, torchrun_workers("tool.dev.bench_train", 1, flags, share=procs)[0])
        cols[f"{procs} processes"] = (
            procs, torchrun_workers("tool.dev.bench_train", procs, flags)[0])
    res, rows = {}, []
    for label, first in cols["1 process"][1].items():
        ips = [n * col[label]["batch"] / col[label]["s_per_iter"] for n, col in cols.values()]
        res[label] = {"from_epoch": first["from_epoch"],
                      **{f"images_per_s ({c})": v for c, v in zip(cols, ips)}}
        extra = [ips[2] / ips[0], ips[2] / (procs * ips[1])] if len(ips) == 3 else []
        rows.append([label, first["from_epoch"], *ips, *extra])
    header = ["phase", "from epoch", *(f"{c} img/s" for c in cols)]
    if len(cols) == 3:
        header += ["speed-up", "DDP efficiency"]
    print_table(f"training step, {args.train_config} (batch {first['batch']} per process, "
                f"N = {procs}, torchrun DDP over Gloo/NCCL)", header, rows)
    return res


def worker(args: argparse.Namespace) -> dict:
    """One rank of the DDP column: one CRF process each, as the cores are shared."""
    return measure(args.train_config, args.voc12_root, args.train_iters, {"crf_workers": 1})


if __name__ == "__main__":
    worker_main(add_args, worker)
