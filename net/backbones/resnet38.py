"""ResNet-38 (Wu et al.'s wide ResNet "model A1") in the PSA/SEAM ``resnet38d`` key layout.

Parameter names and shapes are those of PSA/SEAM's ``resnet38d.Net`` (``conv1a.weight``,
``b2.bn_branch2a.*``, ``b4_5.conv_branch2b1.weight``, ``b6.conv_branch2b2.weight``,
``bn7.running_var``, ...), so the community's converted ImageNet checkpoint
``ilsvrc-cls_rna-a1_cls1000_ep-0001.pth`` loads with a full key-coverage check. Converted from
MXNet, that file has no ``num_batches_tracked`` counters; they are filled in as 0 (PyTorch's own
rule for old checkpoints) instead of counting as missing. Its classifier keys, if any, are
reported as unexpected.

Layout: conv1a (3x3, stride 1), stages b2, b3, b4 (stride 2 each), b5 (stride 1, dilation 2),
b6, b7 (bottlenecks, dilation 4, dropout), bn7: output stride 8. Blocks are pre-activation
(BN-ReLU before each conv); the projection shortcut starts from the first BN-ReLU.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from net.norm import FixedBatchNorm2d
from net.weights import LoadReport, load_backbone_state, load_backbone_weights, no_weights
from tool.common.errors import UserError

NAME = "resnet38"
WEIGHT_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
HINT = (f"the ImageNet ResNet-38 checkpoint {WEIGHT_FILE} in PSA/SEAM's resnet38d layout, "
        "converted from Wu et al.'s MXNet ilsvrc-cls_rna-a1_cls1000_ep-0001.params")

# Basic-block stages: (name, blocks, in, mid, out, stride, first conv's dilation, dilation).
STAGES = (
    ("b2", 3, 64, 128, 128, 2, 1, 1),
    ("b3", 3, 128, 256, 256, 2, 1, 1),
    ("b4", 6, 256, 512, 512, 2, 1, 1),
    ("b5", 3, 512, 512, 1024, 1, 1, 2),
)
# Blocks whose input pre-activation ReLU(bn_branch2a(x)) is a tap: SEAM's conv3, conv4, conv5.
TAP_BLOCKS = ("b4", "b5", "b6")


class PreActBlock(nn.Module):
    """Pre-activation residual block: out = shortcut + residual(ReLU(bn_branch2a(x))).

    The shortcut is x itself, or ``conv_branch1`` of the pre-activation when the shape changes.
    ``forward(x)``: (N, C_in, H, W) -> (out (N, C_out, H / s, W / s), pre (N, C_in, H, W)).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: type[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.bn_branch2a = norm(in_ch)
        self.conv_branch1 = (nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
                             if stride != 1 or in_ch != out_ch else None)

    def residual(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        return shortcut + self.residual(pre), pre


class ResBlock(PreActBlock):
    """Two 3x3 convs (``ResBlock`` of resnet38d); the first one strides."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int = 1, dilation: int = 1,
                 norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> None:
        super().__init__(in_ch, out_ch, stride, norm)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = norm(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation,
                                        bias=False)

    def residual(self, pre: torch.Tensor) -> torch.Tensor:
        return self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))


class ResBlockBottleneck(PreActBlock):
    """1x1 -> dilated 3x3 -> 1x1 convs, channels out/4, out/2, out (``ResBlock_bot``), with
    channel dropout before the last two convs."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float,
                 norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> None:
        super().__init__(in_ch, out_ch, 1, norm)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = norm(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = norm(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)

    def residual(self, pre: torch.Tensor) -> torch.Tensor:
        x = self.conv_branch2a(pre)
        x = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(x))))
        return self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(x))))


class ResNet38Backbone(nn.Module):
    """ResNet-38 trunk: ``forward(x)`` -> (p1, p3, p5, p7) as SEAM's conv3..conv6 (METHOD.md 2.7).

    p1 = ReLU(b4.bn_branch2a(b3_2 output)): 256 ch, stride 4;
    p3 = ReLU(b5.bn_branch2a(b4_5 output)): 512 ch, stride 8;
    p5 = ReLU(b6.bn_branch2a(b5_2 output)): 1024 ch, stride 8;
    p7 = ReLU(bn7(b7 output)): 4096 ch, stride 8.
    ``trainable_bn=False`` (default) normalises with running statistics as PSA/SEAM do.
    """

    def __init__(self, trainable_bn: bool = False) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if trainable_bn else FixedBatchNorm2d
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self._blocks: list[str] = []  # forward order; modules are attributes for the key names
        for name, n, in_ch, mid, out, stride, first_dil, dil in STAGES:
            self._add(name, ResBlock(in_ch, mid, out, stride, first_dil, dil, norm))
            for i in range(1, n):
                self._add(f"{name}_{i}", ResBlock(out, mid, out, dilation=dil, norm=norm))
        self._add("b6", ResBlockBottleneck(1024, 2048, dilation=4, dropout=0.3, norm=norm))
        self._add("b7", ResBlockBottleneck(2048, 4096, dilation=4, dropout=0.5, norm=norm))
        self.bn7 = norm(4096)
        self.tap_channels = (256, 512, 1024, 4096)
        self.output_stride = 8

    def _add(self, name: str, block: PreActBlock) -> None:
        self.add_module(name, block)
        self._blocks.append(name)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> (p1, p3, p5, p7)."""
        x = self.conv1a(x)
        taps = []
        for name in self._blocks:
            x, pre = getattr(self, name)(x)
            if name in TAP_BLOCKS:
                taps.append(pre)
        return (*taps, F.relu(self.bn7(x)))

    def load_imagenet_weights(self, path: str | os.PathLike | None) -> LoadReport | None:
        """Load the converted ImageNet checkpoint (or, with mxnet installed, the original
        ``.params``) from a local file; None/'None' = keep the random init."""
        if not no_weights(path) and str(path).endswith(".params"):
            return self._load_mxnet(str(path))
        return load_backbone_weights(self, path, NAME, HINT)

    def _load_mxnet(self, path: str) -> LoadReport | None:
        """Convert an MXNet ``.params`` file with :func:`mxnet_to_torch_name`, then load it."""
        try:
            import mxnet  # optional: only this file format needs it
        except ImportError as e:
            raise UserError(f"{path}: reading MXNet .params files needs the optional `mxnet` "
                            f"package; the converted {WEIGHT_FILE} works without it") from e
        if not os.path.isfile(path):
            return load_backbone_weights(self, path, NAME, HINT)  # raises "not found"
        state = {mxnet_to_torch_name(k): torch.from_numpy(v.asnumpy())
                 for k, v in mxnet.nd.load(path).items()}
        return load_backbone_state(self, state, path, NAME)


# MXNet parameter names of model A1 -> resnet38d names (as PSA's converter maps them):
#   [arg:|aux:]conv1a_weight                   -> conv1a.weight
#   res{S}a_branch{B}_weight                   -> b{S}.conv_branch{B}.weight
#   res{S}b{K}_branch{B}_weight                -> b{S}_{K}.conv_branch{B}.weight
#   bn{S}a_branch{B}_{gamma|beta|moving_mean|moving_var}
#                                              -> b{S}.bn_branch{B}.{weight|bias|running_*}
#   bn7_{...}                                  -> bn7.{...}
#   anything else (the ImageNet classifier linear1000_*) -> "{module}.{suffix}", unexpected
_MX_SUFFIX = {"weight": "weight", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_var": "running_var"}
_MX_BLOCK = re.compile(r"(res|bn)(\d)(a|b\d)_(branch[0-9a-z]+)_(\w+)")


def mxnet_to_torch_name(key: str) -> str:
    """Map one MXNet model-A1 parameter name to its resnet38d state-dict key (table above)."""
    key = key.split(":", 1)[-1]  # MXNet saves arguments as arg:NAME, statistics as aux:NAME
    m = _MX_BLOCK.fullmatch(key)
    if m:
        kind, stage, pos, branch, suffix = m.groups()
        block = f"b{stage}" if pos == "a" else f"b{stage}_{pos[1:]}"
        layer = "conv" if kind == "res" else "bn"
        return f"{block}.{layer}_{branch}.{_MX_SUFFIX.get(suffix, suffix)}"
    module, _, suffix = key.partition("_")
    return f"{module}.{_MX_SUFFIX.get(suffix, suffix)}"


def resnet38(trainable_bn: bool = False) -> ResNet38Backbone:
    """ResNet-38 (resnet38d) trunk, output stride 8, taps (256, 512, 1024, 4096)."""
    return ResNet38Backbone(trainable_bn)
