"""Batch-norm variants and swaps: frozen BN (running statistics only) and the SyncBatchNorm
conversion for multi-process training. Each swap keeps the layer's state dict."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FixedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics, as IRN/MuSCLe's ResNet.

    Train mode neither uses batch statistics nor updates the running ones. ``weight`` and
    ``bias`` stay trainable Parameters (IRN trains them too); the state dict keys are those of
    ``nn.BatchNorm2d``, so ImageNet checkpoints load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def replace_modules(module: nn.Module, kind: type[nn.Module],
                    make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every submodule whose type is exactly ``kind`` by ``make(submodule)``.

    Exact type, not isinstance: ``FixedBatchNorm2d`` subclasses ``nn.BatchNorm2d`` and must not
    be converted again (to SyncBatchNorm, say).
    """
    for name, child in module.named_children():
        if type(child) is kind:
            setattr(module, name, make(child))
        else:
            replace_modules(child, kind, make)


def fix_batchnorm(module: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a FixedBatchNorm2d with its state."""
    def freeze(bn: nn.Module) -> nn.Module:
        fixed = FixedBatchNorm2d(bn.num_features, bn.eps, bn.momentum)
        fixed.load_state_dict(bn.state_dict())
        return fixed

    replace_modules(module, nn.BatchNorm2d, freeze)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Trainable ``nn.BatchNorm2d`` layers -> ``SyncBatchNorm`` with the same state.

    Unlike ``SyncBatchNorm.convert_sync_batchnorm`` this leaves frozen BN subclasses (which
    always use running statistics) alone.
    """
    def convert(bn: nn.BatchNorm2d) -> nn.Module:
        sync = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                bn.track_running_stats)
        sync.load_state_dict(bn.state_dict())
        return sync.to(bn.weight.device if bn.affine else bn.running_mean.device)

    replace_modules(module, nn.BatchNorm2d, convert)
    return module
