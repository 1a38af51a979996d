"""What produced the files of an output folder (METHOD.md 6 step 5): a small JSON beside them,
so that a rerun resuming by file existence never mixes the outputs of two different runs.

``<folder>/.provenance.json`` = {"outputs": {kind: settings}, "run": {...}}: per output kind
written there (several kinds may share a folder), the settings its files depend on; ``run``
says, for people, which command wrote it last (not compared).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tool.common.fileio import save_text

NAME = ".provenance.json"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (a checkpoint need not fit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists), to compare with a record."""
    return json.loads(json.dumps(value))


def read_provenance(folder: str | os.PathLike) -> dict[str, dict] | None:
    """{kind: settings} recorded in ``folder``; None without a record; {} for a record that
    cannot be read (its files then count as unrecorded)."""
    path = Path(folder) / NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return outputs if isinstance(outputs, dict) else {}


def write_provenance(folder: str | os.PathLike, records: dict[str, dict],
                     run: dict[str, Any]) -> None:
    """Record ``records`` ({kind: settings}) in ``folder``, keeping the other kinds' records."""
    outputs = read_provenance(folder) or {}
    outputs.update(plain(records))
    text = json.dumps({"outputs": outputs, "run": plain(run)}, indent=1, sort_keys=True)
    save_text(Path(folder) / NAME, text + "\n")


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ, as ``key old -> new`` (nested dicts by dotted key)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k} {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, dict):
        return "on"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]  # a SHA-256: its first 12 digits tell two files apart
    return str(v)


def recorded_differences(folder: str | os.PathLike, new: dict[str, dict],
                         extensions: dict[str, str], names: list[str]) -> list[str]:
    """Why ``folder`` may not take more outputs of ``new`` ({kind: settings}): the recorded
    settings that differ (``key old -> new``), or ``its <kind> files record no settings``
    when it holds files of ``names`` (``<name><extension of kind>``) but no record of them.
    Empty: the folder agrees (or holds nothing of these kinds)."""
    folder = Path(folder)
    old = read_provenance(folder)
    diffs: list[str] = []
    for kind, settings in new.items():
        if old is not None and kind in old:
            diffs += differences(old[kind], settings)
        elif any((folder / f"{n}{extensions[kind]}").exists() for n in names):
            diffs.append(f"its {kind} files record no settings")
    return list(dict.fromkeys(diffs))  # kinds sharing a folder: each difference once


def remove_outputs(folder: str | os.PathLike, extensions: list[str], all_names: list[str],
                   names: list[str], rank: int = 0) -> int:
    """Delete the previous outputs (``<name><ext>``) in ``folder``; returns how many.

    Each process deletes those of its own ``names`` (no race between the processes of a
    torchrun launch); rank 0 also every other file of these extensions when the folder is
    known to hold such outputs (it has a record), which a later list could otherwise take for
    finished. A folder without a record may hold other files: only the listed ones go.
    """
    folder = Path(folder)
    owned = read_provenance(folder) is not None
    gone = 0
    for ext in extensions:
        for n in names:
            p = folder / f"{n}{ext}"
            if p.is_file():
                p.unlink()
                gone += 1
    if owned and rank == 0:
        listed, exts = set(all_names), set(extensions)
        for p in folder.iterdir():
            if p.suffix in exts and p.stem not in listed and p.is_file():
                p.unlink()
                gone += 1
    return gone


def prepare_output_folders(folders: dict[str, Path], extensions: dict[str, str],
                           settings: dict[str, dict], extra: dict[str, Any],
                           all_names: list[str], names: list[str], rank: int = 0,
                           overwrite: bool = False) -> None:
    """Before an inference run writes: every output folder created, emptied of the previous
    run's outputs with ``overwrite`` (:func:`remove_outputs`), and its record written
    (``{kind: settings[kind]}`` and ``extra``). ``folders`` and ``extensions``: by kind."""
    import logging

    for kind, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        if overwrite:
            gone = remove_outputs(folder, [extensions[kind]], all_names, names, rank)
            if gone:
                logging.getLogger("plmix").info(
                    "--overwrite: removed %d output(s) of a previous run from %s", gone, folder)
        write_provenance(folder, {kind: settings[kind]}, extra)
