"""The preflight every stage runs before its first step (METHOD.md 12.7): collect every problem
of the inputs and the output folders, then report them all together before any compute.

This module holds the collector and the output-folder checks, which know nothing of any data
set; the data set checks are in ``data/preflight.py``.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tool.common.errors import UserError

MAX_LINES = 10  # problems listed in the message; the rest are counted
EXAMPLES = 3    # items named on the line of a group problem (e.g. missing images)


class PreflightError(UserError):
    """Several input problems at once: the first line counts them, one line follows for each
    (``cli_main`` prints them all)."""

    multiline = True

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[str]) -> str:
    """One problem: its line alone (a plain one-line error). Several: a count, then up to
    ``MAX_LINES`` of them and how many more."""
    if len(problems) == 1:
        return problems[0]
    shown = [f"  - {p}" for p in problems[:MAX_LINES]]
    if len(problems) > MAX_LINES:
        shown.append(f"  ... and {len(problems) - MAX_LINES} more")
    return "\n".join([f"preflight found {len(problems)} problems:", *shown])


class Problems:
    """The problems one preflight finds, in the order found."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.lines)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_group(self, head: str, items: Sequence[str]) -> None:
        """One line for many items of the same kind (``head: a``, or ``head (N): a, b, c,
        ...``): a folder without its 10,000 images is one problem, not 10,000."""
        if not items:
            return
        if len(items) == 1:
            self.add(f"{head}: {items[0]}")
            return
        more = ", ..." if len(items) > EXAMPLES else ""
        self.add(f"{head} ({len(items)}): {', '.join(items[:EXAMPLES])}{more}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise PreflightError(self.lines)


# ------------------------------------------------------------------------- output folders


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a folder to be created lands there)."""
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _writable(folder: Path) -> str | None:
    """Why ``folder`` refuses a new file (None: it takes one). An unnamed temporary file is
    the real test (read-only mounts, ACLs, quotas); it leaves nothing behind."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_output_folder(problems: Problems, folder: str | os.PathLike, what: str,
                        files: Sequence[str] = (), need_bytes: int = 0) -> None:
    """The checks of an output folder (``what`` names its flag): not a file, writable (the
    nearest existing ancestor when it does not exist yet: nothing is created here), no folder
    where one of ``files`` will be written, and ``need_bytes`` free."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        problems.add(f"{what} {folder} is a file, not a folder")
        return
    base = _nearest_existing(folder)
    if not base.is_dir():
        problems.add(f"{what} {folder} cannot be created: {base} is a file")
        return
    why = _writable(base)
    if why is not None:
        problems.add(f"{what} {folder} is not writable: {base}: {why}")
        return
    dirs = [str(folder / f) for f in files if (folder / f).is_dir()]
    problems.add_group(f"{what}: a folder stands where a file is written", dirs)
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            problems.add(f"{what} {folder}: {_size(free)} free on its disk, the checkpoints "
                         f"need about {_size(need_bytes)}")


def checkpoint_bytes(n_params: int) -> int:
    """The size of a training checkpoint, estimated: float32 weights and Adam's two moments
    (3 x 4 bytes a parameter), plus a margin for BN buffers, history and config."""
    return 12 * n_params + (16 << 20)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ------------------------------------------------------------------------- write failures


@contextmanager
def reported_write(path: str | os.PathLike, hint: str = "") -> Iterator[None]:
    """Turn a failed write of ``path`` (full disk, lost permission) into one UserError line,
    ``cannot write <path>: <reason>[; hint]``, instead of a traceback."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or os.strerror(e.errno or errno.EIO)
        raise UserError(f"cannot write {path}: {reason}{'; ' + hint if hint else ''}") from e
    except RuntimeError as e:
        # torch.save writing to a path (not a file object) reports the C++ writer's failure
        if "PytorchStreamWriter" not in str(e) and "inline_container" not in str(e):
            raise
        raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}"
                        f"{'; ' + hint if hint else ''}") from e


def check_input_files(problems: Problems, args: Any, flags: Sequence[str]) -> None:
    """The optional input files of a trainer: each flag's file (unless it names none) and a
    ``--resume CKPT`` must exist."""
    from tool.common.checkpoint import no_weights

    for flag in flags:
        path = getattr(args, flag)
        if not no_weights(path) and not Path(path).is_file():
            problems.add(f"--{flag} file not found: {path}")
    resume = getattr(args, "resume", False)
    if isinstance(resume, str) and not Path(resume).is_file():
        problems.add(f"--resume checkpoint not found: {resume}")
