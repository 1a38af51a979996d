"""Reporting for ``eval_cam.py`` and in-process callers (tool/dev/demo.py): the result line, the
per-class table, the curve plot, the JSON file and the appended evaluation log."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tool.common.errors import UserError
from tool.eval.evaluation import CurveResult


def format_t(t: float | None) -> str:
    """``0.30`` style (at least two decimals, more when needed); ``-`` for png (no threshold)."""
    if t is None:
        return "-"
    s = f"{t:.2f}"
    return s if float(s) == t else f"{t:.10g}"


def result_line(res: CurveResult) -> str:
    """The final line of eval_cam.py: ``mIoU: 61.23% at t=0.30`` (``at t=-`` for png)."""
    return f"mIoU: {res.best_miou:.2f}% at t={format_t(res.best_t)}"


def per_class_table(res: CurveResult) -> str:
    """``class  IoU %``, one line per class by label value (21 for VOC, 81 for COCO, whose
    names, such as ``baseball glove``, set a wider name column)."""
    width = max(14, 2 + max(map(len, res.per_class), default=0))
    lines = [f"{'class':<{width}}{'IoU %':>8}"]
    lines += [f"{name:<{width}}{iou:>8.2f}" for name, iou in res.per_class.items()]
    return "\n".join(lines)


def curve_lines(res: CurveResult) -> list[str]:
    return [f"t={format_t(t)}\tmIoU={v:.3f}%" for t, v in zip(res.thresholds, res.miou)]


def printed_lines(res: CurveResult) -> list[str]:
    """What eval_cam.py prints: the curve (when there is one), the per-class table, and last
    the result line."""
    return (curve_lines(res) if len(res.miou) > 1 else []) + [per_class_table(res),
                                                              result_line(res)]


def save_result(res: CurveResult, json_path: str | os.PathLike | None = None,
                plot: str | os.PathLike | None = None, logfile: str | os.PathLike | None = None,
                comment: str = "", log_args: dict | None = None) -> None:
    """Write what eval_cam.py's ``--json``, ``--plot`` and ``--logfile`` ask for (None: not
    that one); ``comment`` and ``log_args`` (what was evaluated) go into the log record."""
    from tool.common.fileio import save_text

    if json_path:
        save_text(json_path, json.dumps(res.to_json(), indent=2) + "\n")
    if plot:
        save_curve_plot(res, plot)
    if logfile:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        append_log(logfile, log_record(res, comment, log_args or {}, when))


def save_curve_plot(res: CurveResult, path: str | os.PathLike) -> None:
    """PNG of mIoU against threshold with the best point marked (Agg backend), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tool.common.fileio import atomic_save

    if res.best_t is None:
        raise UserError("--plot needs a threshold curve (--type npy)")
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(res.thresholds, res.miou, marker=".", lw=1)
        ax.plot([res.best_t], [res.best_miou], "r*", ms=12,
                label=f"best {res.best_miou:.2f}% at t={format_t(res.best_t)}")
        ax.set_xlabel("background threshold t")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def log_record(res: CurveResult, comment: str, args: dict, when: str) -> str:
    """One appended evaluation-log record: time and comment, args, result, curve if any."""
    lines = [f"{when}\t{comment}", f"args: {args}", result_line(res)]
    if len(res.miou) > 1:
        lines += curve_lines(res)
    return "\n".join(lines + ["=" * 40]) + "\n"


def append_log(path: str | os.PathLike, record: str) -> None:
    """Append ``record`` to a text log by rewriting it atomically (never a torn record)."""
    from tool.common.fileio import save_text

    path = Path(path)
    try:
        old = path.read_text() if path.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read log file {path}: {e}") from None
    save_text(path, old + record)
