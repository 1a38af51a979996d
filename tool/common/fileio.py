"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed job therefore never leaves a half-written output, and "file exists" means "finished".
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

# The temporary names atomic_save writes: ".<name>." + mkstemp's 8 random characters + ".tmp".
# A killed job leaves them behind; runfolder.remove_stale_temps matches exactly this pattern.
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npy_dict(path: str | os.PathLike, d: dict) -> None:
    """Save a dict with ``np.save`` (pickled, as MuSCLe/IRN read it), atomically."""
    atomic_save(path, lambda f: np.save(f, d))


def save_text(path: str | os.PathLike, text: str) -> None:
    atomic_save(path, lambda f: f.write(text.encode()))
