"""Backbone registry: ``build_backbone(name, **kwargs)`` over the builders in :data:`BACKBONES`.

Every backbone is an ``nn.Module`` following :class:`Backbone`: ``forward(x)`` returns the four
taps of METHOD.md 2.7 and it loads its ImageNet weights from a local file. To add one, write a
builder returning such a module and register it in :data:`BACKBONES`.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from net.backbones import effb3 as _effb3
from net.backbones import efflite0 as _efflite0
from net.backbones import resnet as _resnet
from net.backbones import resnet38 as _resnet38
from net.backbones.effb3 import effb3
from net.backbones.efflite0 import efflite0
from net.backbones.resnet import resnet18, resnet50
from net.backbones.resnet38 import resnet38
from net.weights import LoadReport
from tool.common.errors import UserError


@runtime_checkable
class Backbone(Protocol):
    """The interface CAMNet relies on.

    ``forward(x)``: (N, 3, H, W) -> (p1, p3, p5, p7): low-level, mid, deep and CAM features,
    (N, tap_channels[i], h_i, w_i); p5 and p7 are at ``output_stride``, p1/p3 may be finer.
    """

    tap_channels: tuple[int, int, int, int]
    output_stride: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def load_imagenet_weights(self, path: str | os.PathLike | None) -> LoadReport | None:
        """Load ImageNet weights from a local file (None/'None'/'' = keep random init);
        UserError on a missing file, a missing key or a shape mismatch (net.weights)."""
        ...


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet38": resnet38,
    "effb3": effb3,
    "efflite0": efflite0,
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with builder options ``kwargs``.

    Unknown names and options the builder does not take are UserErrors (they come from configs).
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    builder = BACKBONES[name]
    accepted = inspect.signature(builder).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    bad = [] if open_ended else [k for k in kwargs if k not in accepted]
    if bad:
        raise UserError(f"backbone {name} does not take option(s) {', '.join(bad)}; "
                        f"it takes {', '.join(accepted) or 'none'}")
    return builder(**kwargs)


def weights_hint(name: str) -> str:
    """The ImageNet checkpoint file(s) backbone ``name`` expects, and where they are published."""
    return {"effb3": _effb3.HINT, "efflite0": _efflite0.HINT,
            "resnet38": _resnet38.HINT}.get(name) or \
        _resnet.weights_hint(name)
