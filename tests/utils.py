"""Helpers shared by several test modules."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from tool.common.errors import UserError


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> contents), to compare output trees."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings."""
    with open(path) as f:
        return list(csv.DictReader(f))


def rows_without_time(path: Path) -> list[dict[str, str]]:
    """``metrics.csv`` rows without the wall-clock column, to compare runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(path)]


def assert_missing_key_fails(backbone, state: dict, key: str, tmp_path: Path) -> None:
    """``state`` without ``key``, saved as broken.pth, must fail to load into ``backbone`` with
    an error naming the file and the key."""
    path = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if k != key}, path)
    with pytest.raises(UserError, match=rf"broken\.pth lacks 1 keys.*{re.escape(key)}"):
        backbone.load_imagenet_weights(path)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields after the command name in /proc/<pid>/stat (state, ppid, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _proc_stat(int(d.name))) is not None:
            parent[int(d.name)] = int(st[1])
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.update(kids)
        todo.extend(kids)
    return found


def alive(pids: set[int]) -> set[int]:
    """The processes of ``pids`` still running (a zombie runs nothing: not alive)."""
    return {p for p in pids if (st := _proc_stat(p)) is not None and st[0] != "Z"}


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll ``cond()`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def stop_after_epoch_0(main, args: list[str]) -> None:
    """Run the entry point ``main(args)`` but stop the engine after epoch 0, as a kill right
    after that epoch's checkpoint would."""
    import pytest

    from tool.common import engine

    real = engine.Engine.train_epoch

    class Stop(Exception):
        pass

    def once(self, ep):
        real(self, ep)
        raise Stop

    engine.Engine.train_epoch = once
    try:
        with pytest.raises(Stop):
            main(args)
    finally:
        engine.Engine.train_epoch = real


def run_script_steps(script: str, argv: list[str], tmp_path: Path,
                     env: dict[str, str] | None = None) -> list[str]:
    """Run the repository's ``script`` (run_refine.sh, ...) with a stand-in interpreter that
    records the command line of each Python step instead of running it (``-m`` calls, the
    config lookups, run for real); returns the recorded lines, in order. ``env``: more
    environment variables (``CONFIG``)."""
    import subprocess
    import sys

    log = tmp_path / "calls.txt"
    py = tmp_path / "py"
    py.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -m ]; then exec {sys.executable} "$@"; fi\n'
                  f'echo "$@" >> {log}\n')
    py.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PY": str(py), "NPROC": "1", **(env or {})}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", str(root / script), *argv], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return log.read_text().splitlines()
