"""The package layout (README "Code layout"): imports point one way, from the scripts down to
the plumbing, so no package imports one above it and there is no package cycle.

    entry scripts (train_mcl, ..., infer_seg), dev  ->  cam, irn, seg
    ->  crf, eval, net, data  ->  common

The entry scripts are thin (parse flags, call the library): nothing imports them, tool/dev
included. Every import counts, including the ones inside functions."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ("train_mcl", "infer_cam", "eval_cam", "make_ir_labels", "train_irn", "infer_irn",
         "train_seg", "infer_seg")
# package -> the packages it may import (besides itself)
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "net": {"common", "data"},
    "crf": {"common"},
    "eval": {"common", "data"},
    "cam": {"common", "data", "net", "crf", "eval"},
    "irn": {"common", "data", "net", "crf", "eval"},
    "seg": {"common", "data", "net", "crf", "eval"},
    "entry": {"common", "data", "net", "crf", "eval", "cam", "irn", "seg"},
    "dev": {"common", "data", "net", "crf", "eval", "cam", "irn", "seg"},
}


def package_of(module: str) -> str | None:
    """The layout package of a dotted module name; None outside the project."""
    parts = module.split(".")
    if parts[0] in ENTRY:
        return "entry"
    if parts[0] in ("net", "data"):
        return parts[0]
    if parts[0] == "tool" and len(parts) > 1:
        return (parts[1] if parts[1] in ("common", "cam", "irn", "seg", "crf", "eval", "dev")
                else "tool?")
    return None


def source_files() -> dict[Path, str]:
    """Every project source file outside tests, with its package."""
    files = {ROOT / f"{name}.py": "entry" for name in ENTRY}
    for top in ("tool", "net", "data"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            if rel.name == "__init__" and len(rel.parts) <= 2:
                continue  # tool/, net/, data/ and their subpackages' empty __init__ files
            files[path] = package_of(".".join(rel.parts))
    return files


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.update(f"{node.module}.{a.name}" for a in node.names)  # a module or a name
    return names


@functools.cache
def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path, pkg in source_files().items():
        for mod in imported_modules(path):
            dep = package_of(mod)
            if dep is not None and dep != pkg:
                edges.setdefault((pkg, dep), []).append(str(path.relative_to(ROOT)))
    return edges


def test_every_source_file_is_in_a_layout_package():
    stray = [str(p.relative_to(ROOT)) for p, pkg in source_files().items() if pkg not in ALLOWED]
    assert not stray, (
        f"modules outside tool/{{common,cam,irn,eval,dev}}, tool/crf.py, net/, data/: {stray}")


def test_imports_point_down_only():
    bad = {f"{a} -> {b}": files for (a, b), files in package_edges().items()
           if b not in ALLOWED.get(a, set())}
    assert not bad, f"imports against the layout: {bad}"


def test_allowed_edges_have_no_cycle():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n}))
                   for n in ALLOWED[start])

    assert not [p for p in ALLOWED if reaches(p, p, {p})]
