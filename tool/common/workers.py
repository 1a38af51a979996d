"""Worker-process pools that die with their owner (METHOD.md 5.5: the CRF pool; stage 2's IR
labels; data preparation).

``worker_pool`` gives a ``ProcessPoolExecutor`` whose workers exit as soon as the process that
owns the pool dies, even by SIGKILL, and ignore SIGINT/SIGTERM (the owner handles those and
finishes or abandons its work itself); ``shutdown_pool`` stops such a pool without hanging when
one of its workers has died.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit as soon as ``parent_pid`` (the pool's owner) is gone.

    Workers block on the call queue, whose pipe every worker also holds open, so a SIGKILLed
    trainer would otherwise leave them (and, through them, multiprocessing's resource tracker,
    which exits when its last pipe writer is gone) running for good. SIGINT and SIGTERM are
    the trainer's to handle: a Ctrl-C reaches the whole process group, and a worker that died
    of it would break the iteration the trainer finishes before it stops.
    """
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    if _set_pdeathsig(signal.SIGKILL):
        # the parent may have died before prctl: then nothing will signal us (we were
        # re-parented, so getppid() changed)
        if os.getppid() != parent_pid:
            os._exit(1)
        return
    threading.Thread(target=_poll_parent, args=(parent_pid,), name="pool-parent-watch",
                     daemon=True).start()


def _set_pdeathsig(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent dies. True if set.

    The kernel fires it when the parent *thread* that created this process exits, not the
    parent process. ProcessPoolExecutor spawns workers from the thread that submits work or
    from its manager thread (which lives as long as the pool); tool/cam/train.py creates and
    uses the pool in its main thread, which lives as long as the run, so there the thread's
    lifetime is the process's. A pool first used from a short-lived thread would lose its
    workers with that thread.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # prctl is variadic: pass full-width unsigned longs, as the kernel reads them
        args = (ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        return libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), *args) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int, period_s: float = 1.0) -> None:
    """Fallback where prctl is unavailable: a dead parent re-parents us, so getppid() changes."""
    while os.getppid() == parent_pid:
        time.sleep(period_s)
    os._exit(1)


def worker_pool(workers: int, mp_context: str = "spawn") -> ProcessPoolExecutor:
    """A process pool whose workers exit when this process dies and ignore SIGINT/SIGTERM
    (``_exit_with_parent``): the CRF pool's (``tool.crf.CRFPool``), stage 2's IR labels', data
    preparation's. Create and first use it in a thread that lives as long as the pool."""
    return ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context(mp_context),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))


def shutdown_pool(ex: ProcessPoolExecutor, cancel_futures: bool = True) -> None:
    """``ex.shutdown(wait=True)`` that also returns when the pool is broken (a worker died).

    CPython's broken-pool cleanup stops the surviving workers with SIGTERM, which
    ``_exit_with_parent`` makes them ignore, then joins them: a plain shutdown would wait
    forever (a survivor may also be blocked on the call queue's lock that the dead worker held).
    So the executor's manager thread is joined in short waits, and once the executor says it
    is broken the survivors are SIGKILLed (their results are lost with the pool anyway).
    Running jobs of a healthy pool finish as before; queued ones are cancelled.
    """
    workers = list((getattr(ex, "_processes", None) or {}).values())  # shutdown drops it
    manager = getattr(ex, "_executor_manager_thread", None)
    ex.shutdown(wait=False, cancel_futures=cancel_futures)
    while manager is not None and manager.is_alive():
        if getattr(ex, "_broken", False):
            for proc in workers:
                if proc.is_alive():
                    proc.kill()
        manager.join(timeout=0.2)
