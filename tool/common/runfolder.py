"""Run-folder safety for trainers: one run per folder at a time, no silent overwrite of a
finished run, and no temporary files left over from a killed one.

A trainer wraps its whole run in :func:`claim_run_folder`; stage 1 (``tool/cam/train.py``) does,
and later stages reuse it with their own file names.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tool.common.dist import broadcast_object, is_main
from tool.common.errors import UserError
from tool.common.fileio import TEMP_NAME

log = logging.getLogger("plmix")

LOCK_NAME = ".lock"


def check_fresh(folder: Path, markers: Sequence[str], resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run (neither ``resume`` nor ``overwrite``) in a folder that already holds
    one of ``markers``: rerunning a training command would otherwise restart from epoch 0 and
    replace its checkpoints without a word."""
    found = [m for m in markers if (folder / m).exists()]
    if found and not (resume or overwrite):
        raise UserError(f"{folder} already holds a run ({', '.join(found)}): add --resume to "
                        "continue it, or --overwrite to start it over")


def remove_outputs(folder: Path, outputs: Sequence[str]) -> None:
    """``--overwrite``: delete the previous run's outputs up front, so that none of them (an old
    ``best.ckpt`` the new run never beats) passes for the new run's."""
    gone = [n for n in outputs if (folder / n).exists()]
    for n in gone:
        (folder / n).unlink()
    if gone:
        log.info("--overwrite: removed the previous run's %s from %s", ", ".join(gone), folder)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.XXXXXXXX.tmp``) that a killed run
    left in ``folder`` (not below it); returns them. Only call it holding the folder's lock:
    a live run's temporaries are in flight."""
    stale = sorted(p for p in folder.glob(".*.tmp") if TEMP_NAME.fullmatch(p.name) and p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) of an interrupted run from %s: %s", len(stale),
                 folder, ", ".join(p.name for p in stale))
    return stale


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # e.g. removed meanwhile by the run that held it
        return ""


def _read_lock(path: Path) -> tuple[int | None, str]:
    """(PID, hostname) written in a lock file; (None, "") when unreadable or garbled."""
    try:
        pid, host = _read_text(path).split()[:2]
        return int(pid), host
    except ValueError:
        return None, ""


def _alive(pid: int | None, host: str) -> bool:
    """Whether the lock holder may still run. On another host we cannot tell: assume it does."""
    if pid is None:
        # a lock without content: its run died between creating and writing it (a window of
        # microseconds), so it must not stay stuck
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has ended but was not reaped yet (in a container whose first process
    reaps no orphans, a killed torchrun worker can stay so): it runs nothing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False  # no /proc (not Linux): os.kill's answer stands


def acquire_lock(folder: Path) -> Path:
    """Create ``folder/.lock`` holding this process's PID and hostname; returns its path.

    Creation is atomic (O_CREAT | O_EXCL), so of two runs starting together one wins. A lock
    whose process is gone from this host (a killed run) is taken over with a warning; a live
    one is a UserError naming its PID.
    """
    path = folder / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = _read_text(path)
            pid, host = _read_lock(path)
            if _alive(pid, host):
                raise UserError(f"{folder} is in use by another run (PID {pid} on {host}); wait "
                                f"for it to end, or use another --session_name (if no such run "
                                f"exists, delete {path})") from None
            # only remove the stale lock if it is still the one just read: a run that took it
            # over meanwhile keeps its own
            if _read_text(path) == text:
                log.warning("taking over %s of a run that ended without removing it (PID %s "
                            "on %s)", path, pid, host or "?")
                path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path
    raise UserError(f"could not take the lock {path}: other runs keep starting in {folder}")


def release_lock(path: Path) -> None:
    """Remove a lock this process holds (and only then: a taken-over lock is another's)."""
    pid, host = _read_lock(path)
    if pid == os.getpid() and host == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def claim_run_folder(folder: str | os.PathLike, *, resume: bool, overwrite: bool,
                     markers: Sequence[str], outputs: Sequence[str]) -> Iterator[Path]:
    """Hold ``folder`` for the duration of a training run (call it before any compute).

    Rank 0 creates the folder, takes its lock, refuses a fresh run over an existing one
    (``markers`` present without ``resume``/``overwrite``), deletes ``outputs`` on
    ``overwrite`` and the temporaries of a killed run; the lock goes on exit, errors included.
    Under torchrun every rank calls it and every rank raises rank 0's refusal, so none waits
    for a peer that has stopped.
    """
    if resume and overwrite:  # the same flags on every rank: no need to ask rank 0
        raise UserError("--resume and --overwrite exclude each other: continue the run, or "
                        "start it over")
    folder = Path(folder)
    lock = None
    error = None
    try:
        if is_main():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                lock = acquire_lock(folder)
                check_fresh(folder, markers, resume, overwrite)
                if overwrite:
                    remove_outputs(folder, outputs)
                remove_stale_temps(folder)
            except UserError as e:
                error = str(e)
            except OSError as e:  # e.g. no permission: the other ranks must hear of it too
                error = f"cannot use the session folder {folder}: {e}"
        error = broadcast_object(error)
        if error is not None:
            raise UserError(error)
        yield folder
    finally:
        if lock is not None:
            release_lock(lock)
