"""Run-folder safety (tool/common/runfolder.py): the lock, the fresh-run guard and the removal of
a killed run's temporary files, without training anything."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tool.common.errors import UserError
from tool.common.runfolder import (
    LOCK_NAME,
    acquire_lock,
    claim_run_folder,
    release_lock,
    remove_stale_temps,
)

KW = {"markers": ("last.ckpt", "metrics.csv"), "outputs": ("best.ckpt", "last.ckpt",
                                                           "metrics.csv")}


def _reaped() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_lock_holds_pid_and_host_and_goes_at_exit(tmp_path):
    with claim_run_folder(tmp_path / "r", resume=False, overwrite=False, **KW):
        pid, host = (tmp_path / "r" / LOCK_NAME).read_text().split()
        assert int(pid) == os.getpid() and host == socket.gethostname()
    assert not (tmp_path / "r" / LOCK_NAME).exists()


def test_lock_goes_on_error_too(tmp_path):
    with pytest.raises(RuntimeError), claim_run_folder(tmp_path, resume=False, overwrite=False,
                                                       **KW):
        raise RuntimeError("training failed")
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_lock_refuses_a_second_run(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(UserError, match=f"in use by another run \\(PID {sleeper.pid} "):
            with claim_run_folder(tmp_path, resume=True, overwrite=False, **KW):
                pytest.fail("entered a locked folder")
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(sleeper.pid)  # kept
    finally:
        sleeper.kill()
        sleeper.wait()


def test_own_lock_refuses_a_nested_claim(tmp_path):
    with claim_run_folder(tmp_path, resume=False, overwrite=False, **KW):
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            acquire_lock(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_on_another_host_counts_as_live(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{_reaped()} some-other-host\n")
    with pytest.raises(UserError, match="on some-other-host"):
        acquire_lock(tmp_path)


def test_unreaped_process_holds_no_lock(tmp_path):
    zombie = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
        (tmp_path / LOCK_NAME).write_text(f"{zombie.pid} {socket.gethostname()}\n")
        release_lock(acquire_lock(tmp_path))
    finally:
        zombie.wait()


@pytest.mark.parametrize("content", ["{pid} {host}\n", ""])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, content):
    """A lock whose process has ended (or that a run killed at once left empty)."""
    pid = _reaped()
    (tmp_path / LOCK_NAME).write_text(content.format(pid=pid, host=socket.gethostname()))
    with caplog.at_level(logging.WARNING, logger="plmix"):
        lock = acquire_lock(tmp_path)
    assert lock.read_text().split()[0] == str(os.getpid())
    assert "taking over" in caplog.text and (not content or f"PID {pid}" in caplog.text)
    release_lock(lock)
    assert not lock.exists()


def test_fresh_run_refused_over_an_existing_one(tmp_path):
    for marker in KW["markers"]:
        run = tmp_path / marker
        run.mkdir()
        (run / marker).write_text("x")
        with pytest.raises(UserError) as e:
            with claim_run_folder(run, resume=False, overwrite=False, **KW):
                pytest.fail("started over an existing run")
        msg = str(e.value)
        assert str(run) in msg and "--resume" in msg and "--overwrite" in msg
        assert "\n" not in msg
        assert sorted(p.name for p in run.iterdir()) == [marker]  # nothing written, lock gone


def test_best_ckpt_alone_is_no_run(tmp_path):
    (tmp_path / "best.ckpt").write_text("x")  # killed in epoch 0 before last.ckpt: no resume
    with claim_run_folder(tmp_path, resume=False, overwrite=False, **KW):
        pass


def test_overwrite_removes_the_previous_outputs(tmp_path):
    for name in ("best.ckpt", "last.ckpt", "metrics.csv", "train.log"):
        (tmp_path / name).write_text("old")
    with claim_run_folder(tmp_path, resume=False, overwrite=True, **KW):
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "train.log"]


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(UserError, match="exclude each other"):
        with claim_run_folder(tmp_path / "r", resume=True, overwrite=True, **KW):
            pass
    assert not (tmp_path / "r").exists()


def test_stale_temporaries_removed_at_start(tmp_path, caplog):
    # the names atomic_save gives its temporaries, as a run killed mid-write leaves them
    stale = []
    for name in ("last.ckpt", "metrics.csv"):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=tmp_path)
        os.close(fd)
        stale.append(Path(tmp).name)
    keep = [".notes.tmp", "x.last.ckpt.ab3_xyz1.tmp", ".last.ckpt.AB3XYZ12.tmp", "best.ckpt"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".last.ckpt.ab3_xyz1.tmp").write_text("keep")  # not below the folder
    with caplog.at_level(logging.INFO, logger="plmix"):
        with claim_run_folder(tmp_path, resume=False, overwrite=False, **KW):
            pass
    assert not any((tmp_path / n).exists() for n in stale)
    assert all((tmp_path / n).exists() for n in keep)
    assert (tmp_path / "sub" / ".last.ckpt.ab3_xyz1.tmp").exists()
    assert "removed 2 temporary file(s)" in caplog.text and stale[0] in caplog.text
    assert remove_stale_temps(tmp_path) == []


def test_unusable_folder_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot use the session folder"):
        with claim_run_folder(tmp_path / "file" / "r", resume=False, overwrite=False, **KW):
            pass
