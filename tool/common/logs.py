"""The log format of every entry point: timestamped lines on stderr, optionally a log file.

Kept apart from ``tool.common.runtime`` (which imports torch) so that light commands such as
``data.prepare_coco`` share it without the torch import.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(logfile: str | Path | None = None, quiet: bool = False) -> None:
    """Log to stderr and, when given, to ``logfile`` (appended; created at the first line
    logged, so a run refused before it logs anything leaves no file). ``quiet`` (the non-zero
    ranks of a DDP run) keeps warnings and errors only."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, delay=True))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)
