"""``metrics.csv``: one row per epoch, rewritten atomically from the run's history (each stage
names its columns)."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tool.common.fileio import save_text


def write_metrics(path: str | Path, history: list[dict], columns: Sequence[str]) -> None:
    """Write all rows (dicts keyed by ``columns``, a missing one as 0); floats with 6
    significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in history:
        w.writerow([_fmt(row.get(c, 0.0)) for c in columns])
    save_text(path, buf.getvalue())


def _fmt(v: object) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
