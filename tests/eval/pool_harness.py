"""Bad files through the evaluator's process pool, many times over, in a process of its own
(tests/eval/test_pool_errors.py runs it): a pool that deadlocks then only costs this process.

    python -m tests.eval.pool_harness DIR CASE RUNS WORKERS

Writes a small dataset under DIR with one bad file (CASE: key, gt or corrupt; see
:func:`make_case`), then runs ``eval_cam.py --curve --num_workers WORKERS`` on it RUNS times in
this process, as the shell would (``cli_main``), each run in a thread with a deadline. Prints
one JSON line: the bad file, the distinct (exit status, stderr) outcomes and the most worker
processes left alive after a run. Exit status 3 when a run overran its deadline (the hang of
issue 12), 0 otherwise.
"""
from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import sys
import threading
from pathlib import Path

import numpy as np

import eval_cam
from data.voc import save_label_png
from tool.common.errors import cli_main

N_IMAGES = 16
SHAPE = (40, 50)
BAD = 5  # index of the bad image
DEADLINE_S = 20.0  # one run on 16 tiny images takes well under a second


def make_case(root: Path, case: str) -> tuple[list[str], Path, Path, Path]:
    """Images im000.. with GT masks and CAM dicts; image BAD is broken as CASE says:
    ``key`` (a dict key 25), ``gt`` (its GT mask missing), ``corrupt`` (its npy not a pickle).
    Returns (names, prediction folder, GT folder, the bad file)."""
    rng = np.random.default_rng(0)
    names = [f"im{i:03d}" for i in range(N_IMAGES)]
    pdir, gdir = root / "pred", root / "gt"
    pdir.mkdir(parents=True, exist_ok=True)
    for n in names:
        save_label_png(rng.integers(0, 4, SHAPE).astype(np.uint8), gdir / f"{n}.png")
        cams = {k: rng.random(SHAPE).astype(np.float32) for k in (0, 1, 2)}
        np.save(pdir / f"{n}.npy", cams, allow_pickle=True)
    bad = names[BAD]
    if case == "key":
        np.save(pdir / f"{bad}.npy", {0: np.zeros(SHAPE, np.float32),
                                      25: np.zeros(SHAPE, np.float32)}, allow_pickle=True)
        return names, pdir, gdir, pdir / f"{bad}.npy"
    if case == "gt":
        (gdir / f"{bad}.png").unlink()
        return names, pdir, gdir, gdir / f"{bad}.png"
    if case == "corrupt":
        (pdir / f"{bad}.npy").write_bytes(b"\x93NUMPY not a pickle")
        return names, pdir, gdir, pdir / f"{bad}.npy"
    raise ValueError(case)


def run_once(argv: list[str]) -> tuple[object, str]:
    """``eval_cam.py ARGV`` as the shell runs it: (exit status, stderr)."""
    err = io.StringIO()
    code: object = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli_main(lambda: eval_cam.main(argv))
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001 - anything else is reported as such
            code = repr(e)
    return code, err.getvalue()


def main(argv: list[str]) -> int:
    root, case, runs, workers = Path(argv[0]), argv[1], int(argv[2]), int(argv[3])
    names, pdir, gdir, bad = make_case(root, case)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    cli = ["--list", str(root / "list.txt"), "--predict_dir", str(pdir), "--gt_dir", str(gdir),
           "--curve", "--num_workers", str(workers)]
    outcomes, left = set(), 0
    for _ in range(runs):
        got: list[tuple[object, str]] = []
        t = threading.Thread(target=lambda out=got: out.append(run_once(cli)), daemon=True)
        t.start()
        t.join(DEADLINE_S)
        if t.is_alive():
            print(json.dumps({"hang": True}), file=sys.__stdout__, flush=True)  # not redirected
            for p in multiprocessing.active_children():  # stuck workers would outlive us
                p.kill()
            os._exit(3)  # the pool is stuck: no clean interpreter exit is possible
        outcomes.add(got[0])
        left = max(left, len(multiprocessing.active_children()))
    print(json.dumps({"hang": False, "bad": str(bad), "outcomes": sorted(outcomes, key=str),
                      "children_left": left}), file=sys.__stdout__, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
