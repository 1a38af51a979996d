"""Worker of the DDP tests, which launch it with

    PYTHONPATH=<repository root> python -m torch.distributed.run --standalone \
        --nproc_per_node 2 tests/cam/ddp_worker.py TASK CONFIG OUT [--flag value ...]

TASK ``steps``: a few DDP iterations through every schedule phase, each rank on its own share
of the data; every rank saves its parameters and losses to OUT/rank<R>.pt.
TASK ``same``: as ``steps``, but every rank trains on the same batches with rank 0's random
draws, so the averaged gradients are one process's gradients.
TASK ``validate``: distributed validation of ``--weights``; rank 0 saves OUT/val.npz.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import train_mcl
from data.datasets import collate_train
from tool.cam.build import build_loaders, build_model, epoch_loader
from tool.cam.step import StepContext, TrainLosses, train_step
from tool.cam.validate import validate
from tool.common.config import parse_config_args
from tool.common.dist import cleanup_distributed, init_distributed, rank_world, wrap_ddp
from tool.common.runtime import epoch_generators, seed_everything
from tool.eval.evaluation import parse_t_range

EPOCHS = (0, 1)  # tiny config: epoch 0 = MCL + IMC + mix branch; epoch 1 adds aug, views, EMD


def parse(config: str, extra: list[str]):
    return parse_config_args(["--config", config, *extra], train_mcl.SECTIONS, "", config)


def same_batches(ds, batch_size: int, epoch: int) -> list[dict]:
    """Batches in list order, identical in every process."""
    ds.set_epoch(epoch)
    return [collate_train([ds[i] for i in range(s, s + batch_size)])
            for s in range(0, len(ds) - batch_size + 1, batch_size)]


def run_steps(args, same: bool) -> dict:
    """Train EPOCHS with DDP when launched by torchrun; returns parameters and losses."""
    device = torch.device("cpu")
    rank = rank_world()[0]
    draw_rank = 0 if same else rank
    seed_everything(args.seed)
    net = build_model(args, device)
    model = wrap_ddp(TrainLosses(net))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.wt_dec)
    train_ds, _ = build_loaders(args)
    losses = []
    for ep in EPOCHS:
        seed_everything(args.seed, ep, draw_rank)
        ctx = StepContext(args, ep, args.camT, *epoch_generators(args.seed, ep, draw_rank))
        batches = (same_batches(train_ds, args.batch_size, ep) if same
                   else epoch_loader(train_ds, args, ep))
        for b in batches:
            losses.append(train_step(model, opt, b, ctx, device))
    return {"params": {k: v.detach().clone() for k, v in net.named_parameters()},
            "losses": losses}


def main(task: str, config: str, out: str, *extra: str) -> None:
    torch.set_num_threads(1)
    args = parse(config, list(extra))
    init_distributed(torch.device("cpu"))
    rank = rank_world()[0]
    try:
        if task in ("steps", "same"):
            torch.save(run_steps(args, same=task == "same"), Path(out) / f"rank{rank}.pt")
        elif task == "validate":
            _, val_ds = build_loaders(args)
            loader = torch.utils.data.DataLoader(val_ds, batch_size=None)
            val = validate(build_model(args, "cpu"), loader, args.gt,
                           parse_t_range(args.val_t_range), torch.device("cpu"), progress=False)
            if rank == 0:
                np.savez(Path(out) / "val.npz", confusion=val.curve.confusion, miou=val.curve.miou,
                         cls_map=val.cls_map, n_local=len(val_ds))
        else:
            raise SystemExit(f"unknown task {task}")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
