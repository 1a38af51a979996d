"""ResNet backbones in torchvision's key layout, returning the four fusion/CAM taps (METHOD.md 2.7).

Blocks are torchvision's own ``BasicBlock``/``Bottleneck``, so a torchvision ImageNet state dict
loads with zero missing keys (its ``fc.*`` are reported as unexpected). Unlike torchvision the
layer2..4 strides are configurable without dilation (IRN's (2, 2, 2, 1) = output stride 16) and a
width multiplier gives small toy networks.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from net.norm import FixedBatchNorm2d
from net.weights import LoadReport, load_backbone_weights
from tool.common.errors import UserError

DEFAULT_STRIDES = (2, 2, 1)  # layer2..layer4; with the stem's 4 this is output stride 16

# Published torchvision ImageNet checkpoints (named only; nothing is downloaded).
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth (or the legacy resnet18-5c106cde.pth)",
    "resnet50": "resnet50-0676ba61.pth (V1) or the legacy resnet50-19c8e357.pth "
                "(not the V2 resnet50-11ad3fa6.pth)",
}


def _make_layer(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int,
                stride: int, norm: type[nn.BatchNorm2d]) -> nn.Sequential:
    """One torchvision stage: ``blocks`` blocks, the first one striding and projecting."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), norm(out))
    layers = [block(inplanes, planes, stride, downsample, norm_layer=norm)]
    layers += [block(out, planes, norm_layer=norm) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetBackbone(nn.Module):
    """ResNet trunk without pooling/classifier: ``forward(x)`` -> (p1, p3, p5, p7).

    p1 = stem (conv1-bn1-relu-maxpool, stride 4), p3 = layer2, p5 = layer3, p7 = layer4, each
    (N, tap_channels[i], H / stride, W / stride). layer1 runs but is not tapped (METHOD.md 2.7).
    """

    def __init__(self, name: str, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 strides: Sequence[int] | None = None, width: float = 1.0,
                 trainable_bn: bool = False) -> None:
        super().__init__()
        strides = tuple(strides) if strides else DEFAULT_STRIDES
        if len(strides) != 3 or any(s not in (1, 2) for s in strides):
            raise UserError(f"{name}: strides must be three values of 1 or 2 for layer2..4, "
                            f"got {list(strides)}")
        base = round(64 * width)
        if width <= 0 or base < 1:
            raise UserError(f"{name}: width must be positive with 64 * width >= 1, got {width}")
        self.arch = name
        self.name = name if width == 1 else f"{name} (width {width:g})"
        self.width = width
        norm = nn.BatchNorm2d if trainable_bn else FixedBatchNorm2d

        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = [base, base * 2, base * 4, base * 8]
        inplanes = [base] + [p * block.expansion for p in planes[:-1]]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            _make_layer(block, i, p, n, s, norm)
            for i, p, n, s in zip(inplanes, planes, layers, (1,) + strides))

        exp = block.expansion
        self.tap_channels = (base, planes[1] * exp, planes[2] * exp, planes[3] * exp)
        self.output_stride = 4 * math.prod(strides)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation, for runs without ImageNet weights.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> (p1, p3, p5, p7)."""
        p1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        p3 = self.layer2(self.layer1(p1))
        p5 = self.layer3(p3)
        p7 = self.layer4(p5)
        return p1, p3, p5, p7

    def load_imagenet_weights(self, path: str | os.PathLike | None) -> LoadReport | None:
        """Load a torchvision ImageNet checkpoint from a local file (None/'None' = keep init)."""
        return load_backbone_weights(self, path, self.name, weights_hint(self.arch))


def weights_hint(name: str) -> str:
    """Which ImageNet file a ResNet expects and where it is published (by name only)."""
    files = WEIGHT_FILES.get(name, f"a torchvision {name} checkpoint")
    return f"torchvision's ImageNet checkpoint {files}, published with torchvision's model zoo"


def resnet18(strides: Sequence[int] | None = None, width: float = 1.0,
             trainable_bn: bool = False) -> ResNetBackbone:
    """ResNet-18 trunk, taps (64, 128, 256, 512) * width; strides for layer2..4."""
    return ResNetBackbone("resnet18", BasicBlock, (2, 2, 2, 2), strides, width, trainable_bn)


def resnet50(strides: Sequence[int] | None = None, width: float = 1.0,
             trainable_bn: bool = False) -> ResNetBackbone:
    """ResNet-50 trunk, taps (64, 512, 1024, 2048) * width; strides for layer2..4."""
    return ResNetBackbone("resnet50", Bottleneck, (3, 4, 6, 3), strides, width, trainable_bn)
