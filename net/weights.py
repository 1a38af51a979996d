"""Checkpoint loading with a key report: ImageNet weights into a backbone, whole CAMNet weights.

Nothing is ever downloaded: every path is a local file. Loading is never a silent
``strict=False``: missing backbone keys and shape mismatches raise :class:`UserError`, and
unexpected keys (e.g. the ImageNet ``fc.*``) are reported and logged (METHOD.md D3, D7).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from tool.common.checkpoint import NO_WEIGHTS, no_weights, read_checkpoint  # noqa: F401 (re-exported)
from tool.common.errors import UserError

logger = logging.getLogger(__name__)

# Keys under which a checkpoint dict may hold the state dict, most specific first:
# released PL-Mix dicts, our trainer's checkpoints, common third-party wrappers.
STATE_DICT_KEYS = ("model_state_dict", "model", "state_dict")
# Parts the released PL-Mix ``EfficientSeg`` (and MuSCLe's ``MuSCLe`` in 'enc' mode) build but
# never use: the EfficientNet head and classifier, and the decoder classifier ``fuse_dec``.
# Their checkpoints carry them; a whole-model load ignores exactly these (and names them).
RELEASED_UNUSED = ("backbone._conv_head.", "backbone._bn1.", "backbone._fc.", "fuse_dec.")
_SHOW = 5  # keys named in one-line messages


@dataclass
class LoadReport:
    """What a load did: the file, the tensors loaded, and the keys that did not match."""

    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file [shape] vs model [shape]"

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.loaded} tensors loaded"]
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatch", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {what} ({_first(keys)})")
        return ", ".join(parts)


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def state_dict_of(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: plain, or wrapped under one of
    :data:`STATE_DICT_KEYS`; a leading ``module.`` (``nn.DataParallel``) is stripped."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict (a dict of tensors, possibly under "
                        f"one of {', '.join(STATE_DICT_KEYS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False
                    ) -> dict[str, torch.Tensor]:
    """Read the state dict of the checkpoint file ``path`` (see :func:`state_dict_of`);
    ``allow_pickle``: see :func:`tool.common.checkpoint.read_checkpoint`."""
    return state_dict_of(read_checkpoint(path, allow_pickle=allow_pickle), path)


def fill_bn_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``num_batches_tracked`` = 0 for every BN whose statistics lack it.

    Files older than PyTorch 0.4.1 (the legacy ``resnet50-19c8e357.pth``) and converted MXNet
    files have no counters; they carry no information the CAM network uses.
    """
    out = dict(state)
    for key in state:
        if key.endswith(".running_mean"):
            out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked",
                           torch.tensor(0, dtype=torch.long))
    return out


def compare_keys(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> LoadReport:
    """Report how ``state`` matches ``model.state_dict()`` without loading anything."""
    own = model.state_dict()
    report = LoadReport(path=path)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
                         for k, v in state.items() if k in own and v.shape != own[k].shape]
    report.loaded = len(own) - len(report.missing) - len(report.mismatched)
    return report


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike | None, name: str,
                          hint: str) -> LoadReport | None:
    """Load ImageNet weights from the local file ``path`` into ``backbone``.

    ``name`` names the backbone in messages; ``hint`` names the checkpoint file(s) it expects and
    where they are published. Returns None (random init) when ``path`` is None/'None'/''. Raises
    UserError when the file is absent, and as :func:`load_backbone_state`.
    """
    if no_weights(path):
        logger.info("no ImageNet weights given: backbone %s randomly initialised", name)
        return None
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"ImageNet weights for backbone {name} not found: {path}; expected a "
                        f"local copy of {hint} (nothing is downloaded)")
    return load_backbone_state(backbone, read_state_dict(path), path, name)


def load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], path: str,
                        name: str) -> LoadReport:
    """Load the ImageNet state dict ``state`` (read from ``path``) into ``backbone``.

    Raises UserError when any backbone key is missing or a shape differs; keys the backbone does
    not have (the ImageNet classifier) are reported as unexpected and ignored. Missing BN
    counters are filled in (:func:`fill_bn_counters`).
    """
    state = fill_bn_counters(state)
    report = compare_keys(backbone, state, path)
    if report.mismatched:
        raise UserError(f"{path} does not fit backbone {name}: shape mismatch "
                        f"{_first(report.mismatched)}")
    if report.missing:
        raise UserError(f"{path} lacks {len(report.missing)} keys of backbone {name}: "
                        f"{_first(report.missing)}")
    unexpected = set(report.unexpected)
    backbone.load_state_dict({k: v for k, v in state.items() if k not in unexpected})
    logger.info("ImageNet weights for %s: %s", name, report)
    return report


def load_cam_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                     checkpoint: object | None = None, allow_pickle: bool = False) -> LoadReport:
    """Load whole-model weights (e.g. a CAMNet) from ``path``.

    Accepts our training checkpoints ({'model': state, 'optimizer': ...}), the released PL-Mix
    dicts ({'model_state_dict': state, 'optimizer_state_dict': ..., 'iteration': ep}), MuSCLe's
    ({'state_dict': state} or plain) and plain state dicts. Keys of the parts the released
    network builds but never uses (:data:`RELEASED_UNUSED`) are dropped and logged. With
    ``strict`` any other missing or unexpected key is a UserError; shape mismatches always
    are. ``checkpoint``: the file's content when the caller has read it already (``path``
    then only names it in messages). ``allow_pickle``: full unpickling of a trusted file
    (:func:`tool.common.checkpoint.read_checkpoint`).
    """
    path = str(path)
    state = (read_state_dict(path, allow_pickle) if checkpoint is None else
             state_dict_of(checkpoint, path))
    own = model.state_dict()
    ignored = [k for k in state if k not in own and k.startswith(RELEASED_UNUSED)]
    if ignored:
        logger.info("%s: ignored %d keys of parts the released network builds but never uses "
                    "(%s)", path, len(ignored), _first(ignored))
        state = {k: v for k, v in state.items() if k not in ignored}
    report = compare_keys(model, state, path)
    problems = [f"shape mismatch {_first(report.mismatched)}"] if report.mismatched else []
    if strict:
        problems += [f"{len(keys)} {what} keys ({_first(keys)})"
                     for what, keys in (("missing", report.missing),
                                        ("unexpected", report.unexpected)) if keys]
    if problems:
        raise UserError(f"{path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)
    logger.info("model weights: %s", report)
    return report
