"""The generic part of the preflight (METHOD.md 12.7): the problem list and its message, the
output-folder checks, and failed writes as one line."""
from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest

from tool.common import preflight
from tool.common.errors import UserError, message
from tool.common.preflight import (
    PreflightError,
    Problems,
    check_output_folder,
    checkpoint_bytes,
    reported_write,
)


def _folder_problems(folder, **kw) -> list[str]:
    p = Problems()
    check_output_folder(p, folder, "--out", **kw)
    return p.lines


def test_one_problem_is_a_plain_line_several_are_counted_and_capped():
    with pytest.raises(PreflightError) as e:
        Problems.raise_if_any(_with(["only one"]))
    assert str(e.value) == "only one" and message(e.value) == "only one"
    many = [f"problem {i}" for i in range(13)]
    with pytest.raises(PreflightError) as e:
        _with(many).raise_if_any()
    lines = message(e.value).splitlines()  # what cli_main prints: every line
    assert lines[0] == "preflight found 13 problems:"
    assert lines[1:11] == [f"  - problem {i}" for i in range(10)]
    assert lines[11:] == ["  ... and 3 more"]
    _with([]).raise_if_any()  # nothing found: nothing raised


def _with(lines):
    p = Problems()
    for line in lines:
        p.add(line)
    return p


def test_group_names_a_few_items():
    p = Problems()
    p.add_group("x", [])
    p.add_group("image not found", ["a"])
    p.add_group("image not found", ["a", "b", "c", "d"])
    assert p.lines == ["image not found: a", "image not found (4): a, b, c, ..."]


def test_a_missing_folder_is_fine_and_not_created(tmp_path):
    out = tmp_path / "new" / "run"
    assert _folder_problems(out, files=("last.ckpt",), need_bytes=1) == []
    assert not (tmp_path / "new").exists()  # the preflight writes nothing


def test_an_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    assert _folder_problems(f) == [f"--out {f} is a file, not a folder"]
    assert _folder_problems(f / "sub") == [f"--out {f / 'sub'} cannot be created: {f} is a file"]
    assert f.read_text() == "x"


def test_a_folder_where_a_file_is_written(tmp_path):
    (tmp_path / "last.ckpt").mkdir()
    assert _folder_problems(tmp_path, files=("last.ckpt", "metrics.csv")) == [
        f"--out: a folder stands where a file is written: {tmp_path / 'last.ckpt'}"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (line,) = _folder_problems(ro / "run")
        assert line == f"--out {ro / 'run'} is not writable: {ro}: Permission denied"
    finally:
        ro.chmod(0o755)


def test_a_folder_refusing_writes(tmp_path, monkeypatch):
    """What a read-only folder gives (the test above cannot run as root): the probe fails."""
    def refuse(**kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(preflight.tempfile, "TemporaryFile", refuse)
    assert _folder_problems(tmp_path) == [
        f"--out {tmp_path} is not writable: {tmp_path}: Permission denied"]


def test_not_enough_free_space(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 0, 5 << 20))
    need = 2 * checkpoint_bytes(10_000_000)
    assert need > 240e6  # weights and two Adam moments of 10M parameters, twice
    assert _folder_problems(tmp_path, need_bytes=need) == [
        f"--out {tmp_path}: 5.0 MiB free on its disk, the checkpoints need about "
        f"{need / 2**20:.1f} MiB"]
    assert _folder_problems(tmp_path, need_bytes=1 << 20) == []


def test_reported_write_is_one_line(tmp_path):
    with pytest.raises(UserError) as e, reported_write(tmp_path / "a.ckpt", "free space"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(e.value) == (f"cannot write {tmp_path / 'a.ckpt'}: No space left on device; "
                            "free space")
    with pytest.raises(UserError, match="cannot write .*a.ckpt: .*inline_container"), \
            reported_write(tmp_path / "a.ckpt"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")
    with pytest.raises(RuntimeError, match="other"), reported_write(tmp_path / "a.ckpt"):
        raise RuntimeError("other")  # not a write failure: left alone
