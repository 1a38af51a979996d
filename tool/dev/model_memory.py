"""Estimate training memory per backbone:
``python -m tool.dev.model_memory [--crop 448] [--size 112]``.

For each backbone's CAMNet, one train-mode 'cam' forward + backward at ``size`` x ``size``
(batch 1, CPU) records the tensors autograd saves for backward (saved_tensors_hooks; each
storage counted once; parameters and buffers excluded). The activation memory per image at
``crop`` is then *estimated* by scaling those bytes with (crop / size)^2, except for the PCM
affinity matrices (N, hw, hw), which grow with (hw)^2: they are scaled with the exact CAM sizes
at both resolutions (computed by a shape-only forward on the meta device). Not counted:
allocator overhead and workspaces, the transient gradients of the backward pass, and the other
forwards of a PL-Mix iteration (two views, the mix image), which add their own activations.
Weights + grads + Adam's two moments are 4 x 4 bytes per parameter (float32).
"""
from __future__ import annotations

import argparse
import itertools

import torch

from net.backbones import build_backbone
from net.cam_net import CAMNet
from tool.common.errors import UserError, cli_main

MB = 2 ** 20
# Table name -> (registered backbone, builder options).
MODELS: dict[str, tuple[str, dict]] = {
    "resnet18-w0.5": ("resnet18", {"width": 0.5}),
    "resnet50": ("resnet50", {}),
    "resnet38": ("resnet38", {}),
    "effb3": ("effb3", {}),
    "efflite0": ("efflite0", {}),
}


def cam_size(backbone: str, options: dict, size: int) -> tuple[int, int]:
    """(h, w) of the CAM for a size x size input, from a shape-only (meta device) forward."""
    with torch.device("meta"), torch.no_grad():
        p7 = build_backbone(backbone, **options)(torch.empty(1, 3, size, size))[-1]
    return tuple(p7.shape[-2:])


def saved_bytes(net: CAMNet, x: torch.Tensor, hw: int) -> tuple[int, int]:
    """Bytes autograd keeps for backward in one 'cam' pass of ``x``: (others, PCM affinities).

    Affinities are the saved (N, hw, hw) tensors, hw the number of CAM positions.
    """
    static = {t.untyped_storage().data_ptr() for t in itertools.chain(net.parameters(),
                                                                       net.buffers())}
    storages: dict[int, tuple[int, bool]] = {}  # data_ptr -> (bytes, is affinity)

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Saved tensors stay alive until backward, so a storage pointer names one storage.
        ptr = t.untyped_storage().data_ptr()
        if ptr not in static:
            affinity = t.dim() == 3 and tuple(t.shape[1:]) == (hw, hw)
            storages[ptr] = (t.untyped_storage().nbytes(),
                             affinity or storages.get(ptr, (0, False))[1])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = net(x, "cam")
    sum(o.mean() for o in outputs).backward()
    net.zero_grad(set_to_none=True)
    affinity = sum(b for b, is_aff in storages.values() if is_aff)
    return sum(b for b, _ in storages.values()) - affinity, affinity


def estimate(name: str, crop: int, size: int) -> dict:
    """One table row for MODELS[name]: parameters, CAM size and memory estimates at ``crop``."""
    backbone, options = MODELS[name]
    torch.manual_seed(0)
    net = CAMNet(backbone, **options).train()
    small, large = cam_size(backbone, options, size), cam_size(backbone, options, crop)
    others, affinity = saved_bytes(net, torch.randn(1, 3, size, size), small[0] * small[1])
    n_params = sum(p.numel() for p in net.parameters())
    position_ratio = (large[0] * large[1]) / (small[0] * small[1])
    act_affinity = affinity * position_ratio ** 2
    return {"backbone": name, "params_m": n_params / 1e6, "cam": large,
            "act_mb": (others * (crop / size) ** 2 + act_affinity) / MB,
            "affinity_mb": act_affinity / MB, "train_state_mb": 16 * n_params / MB}


def markdown(rows: list[dict], crop: int, size: int) -> str:
    """The rows as a markdown table the README can paste."""
    lines = [f"| backbone | params (M) | CAM size @ {crop} | est. activations MB/image @ {crop} "
             f"('cam' pass) | of which PCM affinity MB | weights+grads+Adam MB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['params_m']:.1f} | {r['cam'][0]}x{r['cam'][1]} | "
              f"{r['act_mb']:.0f} | {r['affinity_mb']:.0f} | {r['train_state_mb']:.0f} |"
              for r in rows]
    lines.append(f"\nActivations: measured at {size}x{size} (batch 1, train mode) and scaled to "
                 f"{crop}x{crop}; an estimate (see tool/dev/model_memory.py).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=448, help="training crop to estimate for")
    p.add_argument("--size", type=int, default=112, help="input size actually measured")
    p.add_argument("--backbones", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)}")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.backbones.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise UserError(f"--backbones: unknown {unknown}; choose from {', '.join(MODELS)}")
    if a.size < 32 or a.crop < a.size:
        raise UserError(f"need 32 <= --size <= --crop, got size {a.size}, crop {a.crop}")
    rows = [estimate(n, a.crop, a.size) for n in names]
    print(markdown(rows, a.crop, a.size))
    return rows


if __name__ == "__main__":
    cli_main(main)
