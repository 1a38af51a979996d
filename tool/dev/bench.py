"""Benchmark runner: ``python -m tool.dev.bench [--only eval[,other]] [--json PATH]``.

A section is a module in SECTIONS with ``run(args) -> dict`` (prints its own small table and
returns its numbers) and, optionally, ``add_args(group)`` for options of its own, named with
the section as prefix (``--eval_workers``). Registering a section is one entry in SECTIONS.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from tool.common.errors import UserError, cli_main
from tool.common.fileio import save_text

SECTIONS: dict[str, str] = {  # section name -> module
    "eval": "tool.dev.bench_eval",
    "crf": "tool.dev.bench_crf",
    "train": "tool.dev.bench_train",
    "infer": "tool.dev.bench_infer",
    "refine": "tool.dev.bench_refine",
    "seg": "tool.dev.bench_seg",
}


def ensure_toy_voc(root: str | Path, seed: int = 0) -> Path | None:
    """The toy VOC folder, generated with ``data.toy_voc`` when missing; None without it."""
    root = Path(root)
    if root.is_dir():
        return root
    if find_spec("data.toy_voc") is None:
        return None
    print(f"generating the toy VOC data set in {root} ...", flush=True)
    cmd = [sys.executable, "-m", "data.toy_voc", "--out", str(root), "--seed", str(seed)]
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"could not generate the toy VOC data set in {root}")
    return root


def torchrun_workers(module: str, nproc: int, argv: list[str], share: int | None = None
                     ) -> list[dict]:
    """Run ``module`` as ``nproc`` torchrun processes on this machine, each with a 1/``share``
    share of the cores (default 1/nproc); returns each rank's result (see ``worker_main``)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", module, "--worker_out", out, *argv]
        threads = max(1, (os.cpu_count() or 1) // (share or nproc))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if subprocess.run(cmd, env=env).returncode != 0:
            raise UserError(f"the {nproc}-process benchmark run of {module} failed (see above)")
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(nproc)]


def worker_main(add_args: Callable[[argparse._ArgumentGroup], None],
                measure: Callable[[argparse.Namespace], dict]) -> None:
    """Entry point of one torchrun benchmark process: parse the section's flags, ``measure``,
    and write the result to ``<--worker_out>/rank<R>.json``."""
    from tool.common.dist import cleanup_distributed, rank_world

    p = argparse.ArgumentParser()
    p.add_argument("--worker_out", required=True)
    p.add_argument("--voc12_root", required=True)
    add_args(p.add_argument_group("section"))
    args = p.parse_args()
    try:
        res = measure(args)
    finally:
        cleanup_distributed()
    save_text(Path(args.worker_out) / f"rank{rank_world()[0]}.json", json.dumps(res))


def hw_arg(text: str) -> tuple[int, int]:
    """argparse type of an image size flag: ``H,W`` -> (H, W), both positive."""
    try:
        H, W = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W, got {text!r}") from None
    if H < 1 or W < 1:
        raise argparse.ArgumentTypeError(f"expected a positive H,W, got {text!r}")
    return H, W


def rss_kb() -> float:
    """This process's current resident set in KB (Linux); the peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    except OSError:
        return maxrss_kb()


def reset_peak_rss() -> bool:
    """Start this process's peak resident set (``VmHWM``) afresh at its current resident set
    (Linux >= 4.0: ``/proc/self/clear_refs``), so :func:`peak_rss_kb` measures from here and
    not from an import's or the parent's peak; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kb() -> float:
    """This process's peak resident set in KB since :func:`reset_peak_rss` (``VmHWM``);
    ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return maxrss_kb()


def maxrss_kb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set in KB of this process (``RUSAGE_SELF``) or of its largest waited-for
    child (``RUSAGE_CHILDREN``)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KB on Linux


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A plain aligned table; floats with 3 significant decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"== {title}")
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(f"{c:>{w}}" for c, w in zip(r, widths)))


def _selected(only: str | None) -> list[str]:
    names = list(SECTIONS) if not only else [s.strip() for s in only.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise UserError(f"--only: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Speed benchmarks, one table per section.")
    parser.add_argument("--only", default=None, help=f"sections, comma-separated: {list(SECTIONS)}")
    parser.add_argument("--voc12_root", default="data/toy_voc",
                        help="data set root (the toy VOC is generated here when missing)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all results here")
    first, _ = parser.parse_known_args(argv)
    modules = {n: importlib.import_module(SECTIONS[n]) for n in _selected(first.only)}
    for name, mod in modules.items():
        if hasattr(mod, "add_args"):
            mod.add_args(parser.add_argument_group(f"section {name}"))
    args = parser.parse_args(argv)
    results = {}
    for name, mod in modules.items():
        t0 = time.perf_counter()
        results[name] = mod.run(args)
        print(f"(section {name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    if args.json:
        save_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    cli_main(main)
