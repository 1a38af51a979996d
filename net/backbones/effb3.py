"""EfficientNet-B3 backbone of the released PL-Mix code (METHOD.md 2.1), built with the
``efficientnet-pytorch`` package.

The stem and the 26 MBConv blocks are the package's own modules, so its published checkpoints
load with a full key-coverage check (``_conv_stem.weight``, ``_bn0.*``,
``_blocks.N._depthwise_conv.weight``, ...); the unused head (``_conv_head.*``, ``_bn1.*``,
``_fc.*``) is reported as unexpected. Two changes reproduce the released (modified 0.5.1) model:

- the first block of stage 6 has stride 1 (no dilation), for output stride 16;
- every convolution's static "same" padding is computed from the full image size 300, as
  package 0.5.1 did. Newer versions compute it from each stage's input size, which changes one
  conv: block 5's 5x5 stride-2 depthwise conv (input 75 at size 300) would pad (2, 2) instead
  of the released (1, 2).
"""
from __future__ import annotations

import math
import os

import torch
from efficientnet_pytorch import EfficientNet, get_model_params
from efficientnet_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from net.norm import fix_batchnorm
from net.weights import LoadReport, load_backbone_weights

NAME = "effb3"
MODEL = "efficientnet-b3"
IMAGE_SIZE = 300  # B3's default resolution; fixes every static padding (METHOD.md 2.1)
STRIDE1_STAGE = 5  # 0-based index in the package's seven stages: "stage 6" (k5, 232 ch)
TAP_BLOCKS = (1, 7, 17, 25)  # p1, p3, p5, p7: outputs of these MBConv blocks
HINT = ("the efficientnet-pytorch package's published EfficientNet-B3 release weights "
        "adv-efficientnet-b3-cdd7c0f4.pth (AdvProp, as the released PL-Mix code uses) or "
        "efficientnet-b3-5fb5a3c3.pth")


def same_padding(kernel: int, stride: int, dilation: int, size: int) -> tuple[int, int]:
    """(before, after) padding that makes a conv output ceil(size / stride), as the package."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return pad // 2, pad - pad // 2


def set_static_padding(model: nn.Module, size: int) -> None:
    """Recompute every static-padding conv's padding for input ``size`` (square kernels)."""
    for m in model.modules():
        if isinstance(m, Conv2dStaticSamePadding):
            pad = same_padding(m.kernel_size[0], m.stride[0], m.dilation[0], size)
            m.static_padding = nn.ZeroPad2d(pad * 2) if any(pad) else nn.Identity()


class EfficientNetTrunk(nn.Module):
    """An efficientnet-pytorch network without its head: ``forward(x)`` -> the outputs of the
    MBConv blocks ``tap_blocks`` (p1, p3, p5, p7).

    The stem and blocks are the package's own modules under their own names (the checkpoint
    keys). Static "same" padding is computed once for ``image_size``. BN: the package's momentum
    and eps; trainable unless ``trainable_bn=False`` (running statistics). Stochastic depth:
    block idx drops its residual branch with rate drop_connect_rate * idx / n_blocks, in train
    mode only (the package's rule). ``keep_head``: also keep the package's head
    (``_conv_head``, ``_bn1``, ``_fc``), built but never run, for checkpoints that carry it.
    """

    def __init__(self, blocks_args: list, params, image_size: int,
                 tap_blocks: tuple[int, ...], trainable_bn: bool = True,
                 keep_head: bool = False) -> None:
        super().__init__()
        net = EfficientNet(blocks_args, params)
        set_static_padding(net, image_size)
        self._conv_stem, self._bn0, self._blocks, self._swish = (
            net._conv_stem, net._bn0, net._blocks, net._swish)
        if keep_head:
            self._conv_head, self._bn1, self._fc = net._conv_head, net._bn1, net._fc
        if not trainable_bn:
            fix_batchnorm(self)
        self.tap_blocks = tuple(tap_blocks)
        self.drop_connect_rate = params.drop_connect_rate
        self.tap_channels = tuple(self._blocks[i]._block_args.output_filters
                                  for i in self.tap_blocks)
        strides = [a.stride[0] if isinstance(a.stride, list) else a.stride for a in blocks_args]
        self.output_stride = 2 * math.prod(strides)  # the stem strides 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> (p1, p3, p5, p7)."""
        x = self._swish(self._bn0(self._conv_stem(x)))
        taps = []
        for idx, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self._blocks))
            if idx in self.tap_blocks:
                taps.append(x)
        return tuple(taps)


class EfficientNetB3Backbone(EfficientNetTrunk):
    """EfficientNet-B3 trunk without head: ``forward(x)`` -> (p1, p3, p5, p7).

    Taps are the outputs of blocks 1, 7, 17, 25: (24, 48, 136, 384) channels at strides
    (2, 8, 16, 16). p7 is a linear-bottleneck output (no activation), so it can be negative.
    BN: PyTorch momentum 0.01, eps 1e-3 (the package's B3 values); trainable by default as in
    PL-Mix (METHOD.md 2.6); ``trainable_bn=False`` normalises with running statistics instead.
    Stochastic depth rate 0.2 * idx / 26.
    """

    def __init__(self, trainable_bn: bool = True) -> None:
        blocks_args, params = get_model_params(MODEL, {"image_size": IMAGE_SIZE})
        # Build the package model with stride 1 in stage 6, so its block bookkeeping agrees.
        blocks_args[STRIDE1_STAGE] = blocks_args[STRIDE1_STAGE]._replace(stride=[1])
        super().__init__(blocks_args, params, IMAGE_SIZE, TAP_BLOCKS, trainable_bn)

    def load_imagenet_weights(self, path: str | os.PathLike | None) -> LoadReport | None:
        """Load an efficientnet-pytorch B3 checkpoint from a local file (None = keep init)."""
        return load_backbone_weights(self, path, NAME, HINT)


def effb3(trainable_bn: bool = True) -> EfficientNetB3Backbone:
    """EfficientNet-B3 trunk of METHOD.md 2.1: output stride 16, taps (24, 48, 136, 384)."""
    return EfficientNetB3Backbone(trainable_bn)
