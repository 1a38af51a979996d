"""MuSCLe's "BiFPN" of the stage-3 network (METHOD.md 14.2.3): concatenation and sum fusion.

This is not EfficientDet's BiFPN: there are no learned fusion weights and no separable convs.
Top-down "mid" nodes concatenate two levels and apply a 1x1 conv + swish; bottom-up "out"
nodes sum three terms and apply a 1x1 conv + BN + swish. Module and attribute names are
MuSCLe's (``inp3``..``inp7``, ``BIFPN_Layers``, ``convp67``.., ``out4``..), so the state dict
has its key layout (METHOD.md 14.2.7).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Levels = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Up(x -> size): bilinear with align_corners=True, the identity at equal sizes."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """Pool(x): 3x3 average, stride 2, padding 1, padded zeros counted (count_include_pad)."""
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=True)


def _mid_node(channels: int) -> nn.Sequential:
    """Top-down node: concat of two levels -> 1x1 conv (bias) -> swish; no BN."""
    return nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.SiLU())


def _out_node(channels: int) -> nn.Sequential:
    """Bottom-up node: sum -> 1x1 conv (bias) -> BN (PyTorch defaults) -> swish."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.SiLU())


class BiFPNLayer(nn.Module):
    """One fusion layer (METHOD.md 14.2.3): (P3, .., P7) -> (Q3, .., Q7), all ``channels`` wide.

    P3 is at stride 8, P4 = P5 at 16, P6 = P7 at 32 (16 without ``last_pooling``); each Q_l
    has the shape of P_l. Every node is computed, also those no later layer reads (their BN
    statistics update in train mode, as in MuSCLe: METHOD.md 14.2.5).
    """

    def __init__(self, channels: int = 256, last_pooling: bool = True) -> None:
        super().__init__()
        self.last_pooling = last_pooling
        self.convp67, self.convp56, self.convp45, self.convp34 = (
            _mid_node(channels) for _ in range(4))
        self.out4, self.out5, self.out6, self.out7 = (_out_node(channels) for _ in range(4))

    def forward(self, levels: Levels) -> Levels:
        p3, p4, p5, p6, p7 = levels
        m6 = self.convp67(torch.cat([p6, p7], dim=1))
        m5 = self.convp56(torch.cat([p5, upsample_to(m6, p5.shape[-2:])], dim=1))
        # M4 reads the input P5, not M5 (quirk S4, METHOD.md 14.8); P4 and P5 share stride 16.
        m4 = self.convp45(torch.cat([p4, p5], dim=1))
        q3 = self.convp34(torch.cat([p3, upsample_to(m4, p3.shape[-2:])], dim=1))
        q4 = self.out4(p4 + m4 + upsample_to(_pool(q3), p4.shape[-2:]))
        q5 = self.out5(p5 + m5 + q4)
        down5 = upsample_to(_pool(q5), p6.shape[-2:]) if self.last_pooling else q5
        q6 = self.out6(p6 + m6 + down5)
        q7 = self.out7(p7 + q6)
        return q3, q4, q5, q6, q7


class BiFPN(nn.Module):
    """Input projections plus ``layers`` fusion layers (METHOD.md 14.2.3).

    ``forward(taps)``: the five backbone taps p3..p7, (N, in_channels[i], h_i, w_i) ->
    the last layer's (Q3, .., Q7), (N, channels, h_i, w_i). Projection l:
    swish(BN(conv1x1(p_l))). The layers are deep copies of one constructed layer, so they
    start with identical parameters (quirk S4, METHOD.md 14.8); ``independent_init`` builds
    each one afresh instead.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256, layers: int = 3,
                 last_pooling: bool = True, independent_init: bool = False) -> None:
        super().__init__()
        if len(in_channels) != 5:
            raise ValueError(f"BiFPN takes five levels (p3..p7), got {len(in_channels)}")
        for level, c_in in zip(range(3, 8), in_channels):
            self.add_module(f"inp{level}", nn.Sequential(
                nn.Conv2d(c_in, channels, 1), nn.BatchNorm2d(channels), nn.SiLU()))
        if independent_init:
            stack = [BiFPNLayer(channels, last_pooling) for _ in range(layers)]
        else:
            layer = BiFPNLayer(channels, last_pooling)
            stack = [copy.deepcopy(layer) for _ in range(layers)]
        self.BIFPN_Layers = nn.ModuleList(stack)

    def forward(self, taps: Sequence[torch.Tensor]) -> Levels:
        levels = tuple(getattr(self, f"inp{level}")(p) for level, p in zip(range(3, 8), taps))
        for layer in self.BIFPN_Layers:
            levels = layer(levels)
        return levels
