"""The CRF worker pool's lifetime (tool/crf.py ``CRFPool``): no worker, and no multiprocessing
resource tracker, outlives a SIGKILLed parent; a dead worker is a clear error. A few seconds
(process start-up)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tool.crf import CRFPool

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# the trainer's situation: a pool of 2 spawn workers, then the process is killed outright
CHILD = textwrap.dedent("""
    import sys
    from multiprocessing import resource_tracker
    from tool.crf import CRFPool

    if __name__ == "__main__":
        pool = CRFPool(2)
        pool.warmup()
        pids = list(pool._ex._processes)
        tracker = resource_tracker._resource_tracker._pid
        print(*pids, tracker or 0, flush=True)
        sys.stdin.read()  # blocks until killed
""")


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, only its exit status left for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # the state follows "(comm)"


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            return proc.stdout.readline()
    return ""


@linux_only
def test_workers_and_tracker_die_with_a_killed_parent(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    err = tmp_path / "stderr.txt"
    with open(err, "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_f)
    try:
        line = _read_line(proc, timeout=120)
        assert line, f"the child printed no PIDs; stderr:\n{err.read_text()}"
        *workers, tracker = map(int, line.split())
        assert len(workers) == 2, line
        pids = workers + ([tracker] if tracker else [])
        assert not any(_gone(p) for p in pids), "a process was gone before the kill"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    for p in alive:  # never leave them behind, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive, (f"still running 20 s after the parent was killed: {alive} "
                       f"(workers {workers}, resource tracker {tracker})")


@pytest.mark.parametrize("victim", [0, 1])
def test_dead_worker_is_a_clear_error(victim):
    """... and closing the broken pool returns: the survivor ignores the executor's SIGTERM
    and may be blocked on the call-queue lock the dead worker held (a hang, once, in CI);
    killing either idle worker covers the lock holder."""
    images = np.zeros((2, 16, 16, 3), np.uint8)
    images[1] = 1  # two distinct images: two jobs
    maps = np.zeros((2, 2, 16, 16), np.float32)
    with CRFPool(2) as pool:
        pool.warmup()
        workers = list(pool._ex._processes.values())
        os.kill(workers[victim].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="CRF pool"):
            # the executor may notice the death only at the next call's results
            for _ in range(50):
                pool.map(images, maps)
    assert not any(w.is_alive() for w in workers)


def _crf_batch(n_images: int = 3, size: int = 24) -> tuple[np.ndarray, np.ndarray, list]:
    """Own + partner maps over ``n_images`` images (each image twice, as in training), three
    label sets of different sizes: jobs of different lengths."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    maps = rng.random((2 * n_images, 21, size, size)).astype(np.float16)
    presents = [[1], [2, 3, 4], [5, 6]] * 2
    return np.concatenate([images, images]), maps, presents[:2 * n_images]


def test_map_async_is_map_with_the_same_job_order():
    from tool.crf import CRFParams

    images, maps, presents = _crf_batch()
    params = CRFParams(reduced=True)
    want = CRFPool(0).map(images, maps, presents, params)
    assert np.array_equal(CRFPool(0).map_async(images, maps, presents, params).result(), want)
    assert np.array_equal(CRFPool(1).map_async(images, maps, presents, params).result(), want)
    with CRFPool(2) as pool:
        sent = []
        submit = pool._ex.submit
        pool._ex.submit = lambda fn, *job: sent.append(job[1].shape) or submit(fn, *job)
        batch = pool.map_async(images, maps, presents, params)
        got = batch.result()
        assert batch.done() and batch.result() is got
    assert np.array_equal(got, want) and got.dtype == np.uint8
    # one job per image (own + partner maps, the kept channels), longest (most labels) first
    assert sent == [(2, 4, 24, 24), (2, 3, 24, 24), (2, 2, 24, 24)]


def test_dead_worker_is_a_clear_error_in_map_async_too():
    images, maps, _ = _crf_batch()
    with CRFPool(2) as pool:
        pool.warmup()
        workers = list(pool._ex._processes.values())
        os.kill(workers[0].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="CRF pool: a worker process died"):
            for _ in range(50):  # the death shows at submission or at the result
                pool.map_async(images, maps).result()
    assert not any(w.is_alive() for w in workers)
