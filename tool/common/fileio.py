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


def _umask_from_proc() -> int | None:
    """The process umask from Linux's /proc/self/status (kernel 4.7+), without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_swap() -> int:
    """The umask read the only portable way, by setting and restoring it: os.umask is
    process-wide, so this runs once, at import, before any worker thread exists."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_swap()


def current_umask() -> int:
    """The umask now where /proc tells it (thread-safe), else the one at import."""
    mask = _umask_from_proc()
    return _UMASK_AT_IMPORT if mask is None else mask


def atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it into place.

    The file gets the mode any new file of the user gets (0666 minus the umask), not the
    0600 of ``mkstemp``'s temporary file: outputs are shared like any others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~current_umask())
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


def atomic_symlink(target: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a symbolic link to ``target``: made under a temporary name next to it
    (``TEMP_NAME``'s form) and renamed into place, replacing what was there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()[:8]}.tmp"
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
