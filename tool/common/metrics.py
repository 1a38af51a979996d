"""``metrics.csv``: one row per epoch, rewritten atomically from the run's history."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from tool.common.fileio import save_text

# Epoch means of every loss term; 0 before the term's start epoch (METHOD.md 5.2).
LOSS_COLUMNS = ("loss_cls", "loss_er", "loss_imc", "loss_mixseg", "loss_dice", "loss_iou",
                "loss_sc", "loss_pixpro", "loss_emd")
# camT: the threshold the epoch trained with; best_t, miou: the validation sweep's best
# (empty under the GT-free protocol); val_map: image-level mAP on the validation list.
COLUMNS = ("epoch", "lr", *LOSS_COLUMNS, "camT", "best_t", "miou", "val_map", "seconds")


def write_metrics(path: str | Path, history: list[dict]) -> None:
    """Write all rows (dicts keyed by COLUMNS); floats with 6 significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in history:
        w.writerow([_fmt(row.get(c, 0.0)) for c in COLUMNS])
    save_text(path, buf.getvalue())


def _fmt(v: object) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
