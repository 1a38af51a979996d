"""A bad file under the evaluator's process pool (issue 12): one-line error and exit status 2,
every worker gone, never a hang. The runs happen in tests/eval/pool_harness.py, a process of
its own with a deadline per run, so a deadlocked pool fails the test instead of hanging it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNS, WORKERS = 20, 4
MESSAGES = {"key": "{bad}: dict key 25 is not a class index 0..19",
            "gt": "mask not found: {bad}",
            "corrupt": "cannot read prediction {bad} (ValueError)"}


def _session_members(sid: int) -> list[int]:
    """Processes still in session ``sid`` (Linux /proc): workers that outlived the harness."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("case", ["key", "gt", "corrupt"])
def test_bad_file_under_the_pool_is_one_line_and_never_hangs(tmp_path, case):
    argv = [sys.executable, "-m", "tests.eval.pool_harness", str(tmp_path), case, str(RUNS),
            str(WORKERS)]
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # the harness's own deadline failed: kill its session
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the pool harness hangs")
    left = _session_members(proc.pid)
    for pid in left:  # clean up before judging: a failing run must not leave workers behind
        os.kill(pid, signal.SIGKILL)
    res = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0 and not res["hang"], f"a run overran its deadline\n{err[-2000:]}"
    want = "error: " + MESSAGES[case].format(bad=res["bad"]) + "\n"
    assert res["outcomes"] == [[2, want]]  # every run: status 2 and the same one line
    assert res["children_left"] == 0  # every worker joined after each run
    assert left == []  # and none outlived the process
