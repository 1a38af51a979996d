"""Helpers shared by several test modules."""
from __future__ import annotations

import csv
from pathlib import Path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> contents), to compare output trees."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings."""
    with open(path) as f:
        return list(csv.DictReader(f))


def rows_without_time(path: Path) -> list[dict[str, str]]:
    """``metrics.csv`` rows without the wall-clock column, to compare runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(path)]
