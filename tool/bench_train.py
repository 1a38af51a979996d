"""Benchmark section ``train``: images/s of the training step in each schedule phase, in one
process and in ``--train_procs`` DDP processes (torchrun, Gloo on CPU / NCCL on CUDA), on a
config's data (the toy config by default)."""
from __future__ import annotations

import argparse
import time
from itertools import cycle, islice

import torch

import train_mcl
from tool.bench import print_table, torchrun_workers, worker_main
from tool.config import parse_config_args
from tool.crf import CRFPool
from tool.dist import barrier, init_distributed, local_device, rank_world, wrap_ddp
from tool.runtime import epoch_generators, resolve_device

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


def setup(config: str, voc12_root: str, extra: list[str] | None = None):
    """(config namespace, device, model, (train set, val set)) with a fixed random init."""
    from tool.build import build_loaders, build_model

    cfg = parse_config_args(["--config", config, "--voc12_root", voc12_root, *(extra or [])],
                            train_mcl.SECTIONS + ["infer"], "", config)
    device = local_device(resolve_device(cfg.device))
    torch.manual_seed(0)
    return cfg, device, build_model(cfg, device), build_loaders(cfg)


def measure(config: str, voc12_root: str, iters: int, extra: list[str] | None = None) -> dict:
    """Seconds per iteration of every phase; under torchrun, of the DDP step on each rank's own
    data (all ranks step together: the gradient all-reduce synchronises them)."""
    from tool.build import epoch_loader
    from tool.train_step import StepContext, TrainLosses, train_step

    cfg, device, net, (train_ds, _) = setup(config, voc12_root, extra)
    init_distributed(device)  # under torchrun; nothing otherwise
    model = wrap_ddp(TrainLosses(net), device)
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
    single = measure(args.train_config, args.voc12_root, args.train_iters)
    procs = args.train_procs
    ddp = None
    if procs > 1:  # each process gets its share of the cores, CRF included
        ddp = torchrun_workers("tool.bench_train", procs, [
            "--train_config", args.train_config, "--voc12_root", args.voc12_root,
            "--train_iters", str(args.train_iters)])[0]
    rows, res = [], {}
    for label, s in single.items():
        ips = s["batch"] / s["s_per_iter"]
        res[label] = {"from_epoch": s["from_epoch"], "images_per_s": ips}
        row = [label, s["from_epoch"], s["s_per_iter"], ips]
        if ddp:
            d = ddp[label]
            res[label][f"images_per_s_{procs}procs"] = dips = procs * d["batch"] / d["s_per_iter"]
            row += [d["s_per_iter"], dips, dips / ips]
        rows.append(row)
    header = ["phase", "from epoch", "s/iter", "images/s"]
    if ddp:
        header += [f"s/iter x{procs}", f"images/s x{procs}", "speed-up"]
    print_table(f"training step, {args.train_config} (batch {single[label]['batch']} per "
                f"process, {torch.get_num_threads()} threads in 1 process; x{procs}: torchrun "
                f"DDP, {procs} processes)", header, rows)
    return res


def worker(args: argparse.Namespace) -> dict:
    """One rank of the DDP column: one CRF process each, as the cores are shared."""
    return measure(args.train_config, args.voc12_root, args.train_iters, ["--crf_workers", "1"])


if __name__ == "__main__":
    worker_main(add_args, worker)
