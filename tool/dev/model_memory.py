"""Estimate training memory per backbone and per stage-3 network:
``python -m tool.dev.model_memory [--crop 448] [--size 112] [--seg muscle_b7,deeplabv3_resnet101]``.

For each backbone's CAMNet, one train-mode 'cam' forward + backward at ``size`` x ``size``
(batch 1, CPU) records the tensors autograd saves for backward (saved_tensors_hooks; each
storage counted once; parameters and buffers excluded). The activation memory per image at
``crop`` is then *estimated* by scaling those bytes with (crop / size)^2, except for the PCM
affinity matrices (N, hw, hw), which grow with (hw)^2: they are scaled with the exact CAM sizes
at both resolutions (computed by a shape-only forward on the meta device). Not counted:
allocator overhead and workspaces, the transient gradients of the backward pass, and the other
forwards of a PL-Mix iteration (two views, the mix image), which add their own activations.

A stage-3 SegNet (``--seg``) is measured the same way on its ``forward_train`` followed by the
cross-entropy (which saves its log-softmax), with the network's outputs counted too: 'out' and
'dense_ft' (BiFPN archs) are the inputs of CE and BEACON and live until backward. muscle_b7's
decoder map (256 channels at the input size) dominates it. DeepLab runs at batch 2 (its ASPP
pooling BN refuses 1 in train mode) and is reported per image. BEACON's own saved tensors (k
sampled pixels per class) are negligible and left out.

Weights take 4 bytes per parameter; each parameter that gets a gradient adds 4 bytes of
gradient and 4 per optimizer moment: Adam's two (CAM nets, muscle_b7, toy), SGD momentum's one
(DeepLab's recipe, METHOD.md 14.7.2). Modules a network builds but never runs (MuSCLe's B7
head) get no gradient and no optimizer state.
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from data.description import VOC12
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


@dataclass(frozen=True)
class SegSpec:
    """How a stage-3 arch is measured: the smallest train-mode batch and the number of
    optimizer moments of its recipe."""

    batch: int
    moments: int


SEG_MODELS: dict[str, SegSpec] = {  # SegNet arch -> spec
    "muscle_b7": SegSpec(batch=1, moments=2),  # Adam
    "deeplabv3_resnet101": SegSpec(batch=2, moments=1),  # SGD with momentum
    "toy": SegSpec(batch=1, moments=2),  # Adam
}

SEG_MIN_SIZE = 64  # a SegNet trunk reaches stride 32

# forward() -> (loss to backward, tensors kept alive until backward)
Forward = Callable[[], tuple[torch.Tensor, Sequence[torch.Tensor]]]


def cam_size(backbone: str, options: dict, size: int) -> tuple[int, int]:
    """(h, w) of the CAM for a size x size input, from a shape-only (meta device) forward."""
    with torch.device("meta"), torch.no_grad():
        p7 = build_backbone(backbone, **options)(torch.empty(1, 3, size, size))[-1]
    return tuple(p7.shape[-2:])


def saved_bytes(net: nn.Module, forward: Forward,
                special: Callable[[torch.Tensor], bool] = lambda t: False) -> tuple[int, int]:
    """Bytes held for backward by ``forward()``: the tensors autograd saves and the ones it
    returns as kept, each storage once, ``net``'s parameters and buffers excluded; split into
    (others, those ``special`` marks). Runs the backward, leaving the gradients in place for
    :func:`train_state_bytes`."""
    static = {t.untyped_storage().data_ptr() for t in itertools.chain(net.parameters(),
                                                                       net.buffers())}
    storages: dict[int, tuple[int, bool]] = {}  # data_ptr -> (bytes, is special)

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Saved tensors stay alive until backward, so a storage pointer names one storage.
        ptr = t.untyped_storage().data_ptr()
        if ptr not in static:
            storages[ptr] = (t.untyped_storage().nbytes(),
                             special(t) or storages.get(ptr, (0, False))[1])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, kept = forward()
    for t in kept:
        pack(t)
    loss.backward()
    marked = sum(b for b, is_special in storages.values() if is_special)
    return sum(b for b, _ in storages.values()) - marked, marked


def train_state_bytes(net: nn.Module, moments: int) -> int:
    """Weights (4 bytes per parameter) plus, per parameter that got a gradient, the gradient
    and ``moments`` optimizer buffers (float32); clears the gradients."""
    weights = sum(p.numel() for p in net.parameters())
    trained = sum(p.numel() for p in net.parameters() if p.grad is not None)
    net.zero_grad(set_to_none=True)
    return 4 * weights + 4 * (1 + moments) * trained


def n_params_m(net: nn.Module) -> float:
    return sum(p.numel() for p in net.parameters()) / 1e6


def estimate(name: str, crop: int, size: int) -> dict:
    """One table row for MODELS[name]: parameters, CAM size and memory estimates at ``crop``."""
    backbone, options = MODELS[name]
    torch.manual_seed(0)
    net = CAMNet(backbone, **options).train()
    small, large = cam_size(backbone, options, size), cam_size(backbone, options, crop)
    x, hw = torch.randn(1, 3, size, size), small[0] * small[1]

    def cam_pass() -> tuple[torch.Tensor, list[torch.Tensor]]:
        return sum(o.mean() for o in net(x, "cam")), []

    # the PCM affinities: the saved (N, hw, hw) tensors, hw the number of CAM positions
    others, affinity = saved_bytes(
        net, cam_pass, lambda t: t.dim() == 3 and tuple(t.shape[1:]) == (hw, hw))
    position_ratio = (large[0] * large[1]) / (small[0] * small[1])
    act_affinity = affinity * position_ratio ** 2
    return {"backbone": name, "params_m": n_params_m(net), "cam": large,
            "act_mb": (others * (crop / size) ** 2 + act_affinity) / MB,
            "affinity_mb": act_affinity / MB, "train_state_mb": train_state_bytes(net, 2) / MB}


def estimate_seg(arch: str, crop: int, size: int) -> dict:
    """One table row for the SegNet ``arch`` (random init, default options): its training
    forward + CE at ``size``, per image, scaled to ``crop`` with (crop / size)^2 (every tensor
    is at a fixed stride of the input)."""
    from net.seg_net import SegNet
    from tool.seg.losses import seg_ce_loss

    spec = SEG_MODELS[arch]
    torch.manual_seed(0)
    net = SegNet(arch, num_classes=VOC12.num_classes).train()  # the README's table: VOC
    x = torch.randn(spec.batch, 3, size, size)
    target = torch.randint(0, VOC12.num_classes, (spec.batch, size, size))

    def train_pass() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = net.forward_train(x)
        # the other outputs (dense_ft, aux) reach the loss through a mean, which saves nothing
        loss = seg_ce_loss(out["out"], target) + sum(v.mean() for k, v in out.items()
                                                    if k != "out")
        return loss, list(out.values())

    others, _ = saved_bytes(net, train_pass)
    return {"backbone": f"{arch} (seg)", "params_m": n_params_m(net), "cam": None,
            "act_mb": others / spec.batch * (crop / size) ** 2 / MB, "affinity_mb": 0.0,
            "train_state_mb": train_state_bytes(net, spec.moments) / MB}


def markdown(rows: list[dict], crop: int, size: int) -> str:
    """The rows as a markdown table the README can paste."""
    lines = [f"| network | params (M) | CAM size @ {crop} | est. activations MB/image @ {crop} "
             f"('cam' pass; seg: training forward + CE) | of which PCM affinity MB | "
             f"weights+grads+optimizer MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cam = "-" if r["cam"] is None else f"{r['cam'][0]}x{r['cam'][1]}"
        lines.append(f"| {r['backbone']} | {r['params_m']:.1f} | {cam} | {r['act_mb']:.0f} | "
                     f"{r['affinity_mb']:.0f} | {r['train_state_mb']:.0f} |")
    lines.append(f"\nActivations: measured at {size}x{size} (batch 1, DeepLab 2, train mode) and "
                 f"scaled to {crop}x{crop}; an estimate (see tool/dev/model_memory.py).")
    return "\n".join(lines)


def _names(flag: str, value: str, known: dict) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=448, help="training crop to estimate for")
    p.add_argument("--size", type=int, default=112, help="input size actually measured")
    p.add_argument("--backbones", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)} ('' for none)")
    p.add_argument("--seg", default="", help="stage-3 networks to add, comma-separated subset "
                   f"of {', '.join(SEG_MODELS)} (default none)")
    a = p.parse_args(argv)
    names = _names("--backbones", a.backbones, MODELS)
    seg = _names("--seg", a.seg, SEG_MODELS)
    if not names and not seg:
        raise UserError("nothing to estimate: give --backbones or --seg")
    if a.size < 32 or a.crop < a.size:
        raise UserError(f"need 32 <= --size <= --crop, got size {a.size}, crop {a.crop}")
    if seg and a.size < SEG_MIN_SIZE:  # their stride-32 maps would be 1 x 1: train-mode BN fails
        raise UserError(f"--seg needs --size >= {SEG_MIN_SIZE}, got {a.size}")
    rows = ([estimate(n, a.crop, a.size) for n in names]
            + [estimate_seg(n, a.crop, a.size) for n in seg])
    print(markdown(rows, a.crop, a.size))
    return rows


if __name__ == "__main__":
    cli_main(main)
