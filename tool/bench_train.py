"""Benchmark sections ``train`` and ``infer``: images/s of the training step in each schedule
phase and of multi-scale inference, on a config's data (the toy config by default)."""
from __future__ import annotations

import argparse
import time

import torch

import train_mcl
from tool.bench import print_table
from tool.config import parse_config_args
from tool.crf import CRFPool
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


def _setup(config: str, voc12_root: str, extra: list[str] | None = None):
    from tool.train import build_loaders, build_model

    cfg = parse_config_args(["--config", config, "--voc12_root", voc12_root, *(extra or [])],
                            train_mcl.SECTIONS + ["infer"], "", config)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    return cfg, device, build_model(cfg, device), build_loaders(cfg)


def run(args: argparse.Namespace) -> dict:
    from tool.train import epoch_loader
    from tool.train_step import StepContext, train_step

    cfg, device, model, (train_ds, _) = _setup(args.train_config, args.voc12_root)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    it = iter(epoch_loader(train_ds, cfg, 0))
    batches = [next(it) for _ in range(args.train_iters + 1)]
    rows, res = [], {}
    with CRFPool(cfg.crf_workers if cfg.crf else 0) as pool:
        for label, start, over in PHASES:
            for k, v in over.items():
                setattr(cfg, k, v)
            ep = 0 if start is None else getattr(cfg, start)
            rng, gen = epoch_generators(0, ep)
            ctx = StepContext(cfg, ep, cfg.camT, rng, gen, pool)
            train_step(model, opt, batches[0], ctx, device)  # warm-up
            t0 = time.perf_counter()
            for b in batches[1:]:
                train_step(model, opt, b, ctx, device)
            s = (time.perf_counter() - t0) / args.train_iters
            res[label] = {"s_per_iter": s, "images_per_s": cfg.batch_size / s}
            rows.append([label, ep, s, cfg.batch_size / s])
    print_table(f"training step, {args.train_config} (batch {cfg.batch_size}, crop "
                f"{cfg.crop_size}, {cfg.backbone}, {device})",
                ["phase", "from epoch", "s/iter", "images/s"], rows)
    return res


def add_infer_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--infer_config", default="configs/toy.yaml")


def run_infer(args: argparse.Namespace) -> dict:
    """Images/s of multi-scale + flip inference (forward, resize, sum, min-max, npy)."""
    import tempfile

    from tool import infer

    with tempfile.TemporaryDirectory() as tmp:
        cfg, device, model, _ = _setup(args.infer_config, args.voc12_root, ["--out_npy", tmp])
        t0 = time.perf_counter()
        n = infer.run(cfg, model, cfg.camT)
        s = time.perf_counter() - t0
    print_table(f"inference, {args.infer_config} (scales {cfg.infer_scales} + flips, {device})",
                ["images", "seconds", "images/s"], [[n, s, n / s]])
    return {"images": n, "seconds": s, "images_per_s": n / s}
