"""Training checkpoints (decision D7): atomic ``last.ckpt`` every epoch, ``best.ckpt`` on
improvement; each holds everything needed to continue the run exactly.

Reading is safe by default: ``torch.load(weights_only=True)`` accepts tensors, state dicts
and plain Python values (every checkpoint this project writes), and nothing in a file can
run code. Unpickling arbitrary objects (some third-party or older checkpoints need it) runs
whatever the file says, so it is an explicit opt-in: ``allow_pickle=True`` or the
environment variable ``PLMIX_UNSAFE_PICKLE=1``, for files one trusts.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tool.common.errors import UserError
from tool.common.fileio import atomic_save

log = logging.getLogger("plmix")

UNSAFE_PICKLE_ENV = "PLMIX_UNSAFE_PICKLE"
_TRUE = ("1", "true", "yes", "y", "on")  # METHOD.md D4's spellings of "true"
_SHOW = 5  # keys named in one-line messages


NO_WEIGHTS = (None, "", "none", "None", "null")


def no_weights(path: str | os.PathLike | None) -> bool:
    """True for "no checkpoint": None, '' or the string 'None' of the released run scripts (Q7)."""
    return path in NO_WEIGHTS or (isinstance(path, str) and path.strip() in NO_WEIGHTS)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save under a temporary name, then rename it into place."""
    atomic_save(path, lambda f: torch.save(state, f))


def allow_unsafe_pickle() -> None:
    """``--allow_pickle True``: opt in for this process and the processes it starts (the
    environment reaches every loader, torchrun ranks and workers included)."""
    os.environ[UNSAFE_PICKLE_ENV] = "1"


def unsafe_pickle_allowed(allow_pickle: bool = False) -> bool:
    """Whether full unpickling is allowed: ``allow_pickle`` or ``PLMIX_UNSAFE_PICKLE=1``."""
    return allow_pickle or os.environ.get(UNSAFE_PICKLE_ENV, "").strip().lower() in _TRUE


def _torch_load(path: str) -> object:
    """The safe load: tensors and plain values only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _torch_load_unsafe(path: str) -> object:
    """Full unpickling: runs any code ``path`` holds. Only behind the opt-in."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _refusal(path: str, err: pickle.UnpicklingError) -> str:
    """One line: why the safe loader refused ``path`` and how to opt in."""
    text = str(err)
    glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if glob:
        what = f"holds Python objects beyond tensors and plain values ({glob.group(1)})"
    else:  # a pickle the restricted loader cannot parse, or no checkpoint at all
        op = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        what = ("is not a checkpoint the safe loader can read"
                + (f" ({op.group(1).strip()})" if op else "")
                + ": a corrupt file, or a pickle of another kind")
    return (f"checkpoint {path} {what}; unpickling it runs whatever code the file holds, so "
            f"do it only for a file you trust: add --allow_pickle True (or set "
            f"{UNSAFE_PICKLE_ENV}=1)")


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> object:
    """Load a checkpoint file as it was saved, on the CPU (UserError when missing or unreadable).

    Safe by default (``weights_only``). A file that needs full unpickling is refused in one
    line, unless ``allow_pickle`` or the environment variable ``PLMIX_UNSAFE_PICKLE=1`` opts
    in: then it is unpickled with a warning naming it (dangerous: a crafted file runs code).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as e:
        if not unsafe_pickle_allowed(allow_pickle):
            raise UserError(_refusal(path, e)) from None
    except Exception as e:  # any unreadable file is the user's input error
        raise UserError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    log.warning("%s: unpickling it in full (%s=1 / allow_pickle): any code in the file runs",
                path, UNSAFE_PICKLE_ENV)
    try:
        return _torch_load_unsafe(path)
    except Exception as e:  # noqa: BLE001 - the file's own code may raise anything
        raise UserError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, with one-line errors for missing or broken files
    (``allow_pickle``: see :func:`read_checkpoint`)."""
    ckpt = read_checkpoint(path, allow_pickle=allow_pickle)
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} does not hold a dict")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_model_state(module: nn.Module, state: object, path: str | Path, what: str) -> None:
    """``module.load_state_dict(state)`` (strict), with a one-line UserError on any mismatch:
    "<path> holds <what> checkpoint, not this config's network (missing keys ..., ...)"."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: its 'model' entry is not a state dict (a dict of tensors)")
    own = module.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                       ("shape mismatches", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {name}: {_first(keys)}")
    if problems:
        raise UserError(f"{path} holds {what} checkpoint, not this config's network "
                        f"({'; '.join(problems)})")
    module.load_state_dict(state)


def init_from_stage1(trunk: nn.Module, path: str, flag: str, what: str,
                     allow_pickle: bool = False) -> int:
    """Copy the ``backbone.*`` tensors of a stage-1 checkpoint (``{'model': ...}`` or a plain
    state dict) into ``trunk`` (a later stage's ResNet, e.g. IRN's frozen trunk or the toy
    segmentation trunk); every trunk tensor must be there with its shape, else one UserError
    naming ``flag`` and ``what`` the trunk is. Strides may differ (they change no weight).
    Returns the number of tensors copied."""
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle)
    state = ckpt.get("model", ckpt)
    own = trunk.state_dict()
    missing = [k for k in own if f"backbone.{k}" not in state]
    wrong = [k for k in own if f"backbone.{k}" in state
             and tuple(state[f"backbone.{k}"].shape) != tuple(own[k].shape)]
    if missing or wrong:
        it = (f"lacks backbone.{missing[0]}" if missing else
              f"has backbone.{wrong[0]} of shape {tuple(state[f'backbone.{wrong[0]}'].shape)}, "
              f"the trunk {tuple(own[wrong[0]].shape)}")
        n = sum(p.numel() for p in trunk.parameters())
        raise UserError(f"{flag} {path}: not a stage-1 checkpoint of this trunk ({what}, {n} "
                        f"parameters): it {it}")
    trunk.load_state_dict({k: state[f"backbone.{k}"] for k in own})
    log.info("%s initialised from %s (%d tensors)", what, path, len(own))
    return len(own)
