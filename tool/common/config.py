"""One configuration system: YAML files in ``configs/`` + command-line overrides.

``configs/base.yaml`` is the schema: every key the project knows, grouped in sections, with
the released VOC defaults. Other configs name a parent with ``_base_`` and override keys;
an unknown key is an error. Every leaf is also a command-line flag under its own name
(leaf names are unique across sections), so the released flag names work as they did:
``--voc12_root``, ``--max_epoches``, ``--camT``, ``--crf True``, ...

Entry points see the resolved config as a flat ``argparse.Namespace`` (``args.crop_size``) and
keep the nested dict (``args.config_dict``) to save it with checkpoints and outputs;
``args.given`` names the keys the command line set (a default may yield to a checkpoint's value).
Library callers resolve a config with a dict of values instead of flags (:func:`resolve_config`).
"""
from __future__ import annotations

import argparse
import copy
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tool.common.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
# the sections each stage reads: every leaf of them is a flag of its entry point
TRAIN_SECTIONS = ["run", "data", "model", "train", "schedule", "loss", "plmix", "eval", "quirks"]
INFER_SECTIONS = ["run", "data", "model", "plmix", "eval", "infer"]
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


def str2bool(value: str | bool) -> bool:
    """Decision D4: ``True/False/true/false/1/0/yes/no``; anything else is an error."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False/1/0/yes/no), got {value!r}")


def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(d, dict):
        raise UserError(f"config file {path} must hold a mapping of sections")
    return d


def _merge(base: dict, over: dict, schema: dict, where: Path, prefix: str = "") -> dict:
    """Recursively override ``base`` with ``over``; keys must exist in ``schema``."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        if key not in schema:
            raise UserError(f"unknown config key '{prefix}{key}' in {where}")
        if isinstance(schema[key], dict):
            if not isinstance(val, dict):
                raise UserError(f"config key '{prefix}{key}' in {where} must be a section")
            out[key] = _merge(out[key], val, schema[key], where, f"{prefix}{key}.")
        else:
            out[key] = val
    return out


def load_config(path: str | Path) -> dict:
    """Load a config file, following its ``_base_`` chain down to ``configs/base.yaml``."""
    path = Path(path)
    schema = _read_yaml(BASE_CONFIG)
    if path.resolve() == BASE_CONFIG:
        return schema
    raw = _read_yaml(path)
    parent = raw.pop("_base_", None)
    base = load_config(path.parent / parent) if parent else schema
    return _merge(base, raw, schema, path)


def leaves(cfg: dict) -> dict[str, tuple[str, Any]]:
    """Flat view: leaf name -> (section, value)."""
    return {k: (sec, v) for sec, body in cfg.items() for k, v in body.items()}


def _arg_type(default: Any):
    if isinstance(default, bool):
        return str2bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, list):
        return _parse_list
    return _parse_optional_str


def _parse_list(text: str) -> list:
    """``448,768`` or ``[448, 768]`` -> ``[448, 768]``."""
    t = text.strip()
    val = yaml.safe_load(t if t.startswith("[") else f"[{t}]")
    if not isinstance(val, list):
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,3, got {text!r}")
    return val


def _parse_optional_str(text: str) -> str | None:
    """Paths and names; ``None``/``null``/empty mean "not given" (quirk Q7)."""
    return None if text.strip() in ("", "None", "none", "null") else text


def build_parser(cfg: dict, sections: list[str], description: str,
                 defaults: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with one flag per leaf of the chosen sections (defaults from cfg).

    ``defaults=False``: no defaults at all (``argparse.SUPPRESS``), so a parse holds exactly
    the flags given, however spelled (``--camT=0.3``, ``--cam 0.3``).
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (see configs/)")
    for sec in sections:
        g = p.add_argument_group(sec)
        for key, val in cfg[sec].items():
            kw: dict[str, Any] = {"default": val if defaults else argparse.SUPPRESS,
                                  "type": _arg_type(val), "metavar": key.upper()}
            if isinstance(val, bool):
                kw.update(nargs="?", const=True, metavar="BOOL")
            g.add_argument(f"--{key}", **kw)
    return p


def parse_config_args(argv: list[str] | None, sections: list[str], description: str,
                      default_config: str | Path,
                      extra: Callable[[argparse.ArgumentParser], None] | None = None
                      ) -> argparse.Namespace:
    """Resolve ``--config`` + flag overrides into a flat Namespace.

    ``extra(parser)`` may add entry-point flags that are not config keys (``--resume``).
    The namespace carries ``config_dict`` (the resolved nested config), ``config_path`` and
    ``given``: the config keys set on the command line.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=str(default_config))
    known, _ = pre.parse_known_args(argv)
    cfg = load_config(known.config)
    parsers = [build_parser(cfg, sections, description, defaults=d) for d in (True, False)]
    if extra is not None:
        for p in parsers:
            extra(p)
    args = parsers[0].parse_args(argv)
    # the same parse without defaults holds what the command line set: argparse itself
    # resolves every spelling (``--camT=0.3``, abbreviations), which a scan of argv would not
    keys = {k for sec in sections for k in cfg[sec]}
    given = keys & set(vars(parsers[1].parse_args(argv)))
    return _resolved(cfg, sections, args, known.config, given)


def resolve_config(path: str | Path, sections: list[str],
                   overrides: dict[str, Any] | None = None,
                   attrs: dict[str, Any] | None = None) -> argparse.Namespace:
    """The Namespace :func:`parse_config_args` makes, from values instead of flags.

    ``overrides`` play the command line: keys of the chosen sections (any other is a UserError),
    strings parsed as the flag would parse them (``"False"``, ``"448,768"``, ``"None"``),
    paths as strings, other values as given; ``args.given`` names them. ``attrs`` are set on
    the Namespace as they are: the entry-point flags a library function reads
    (``tool.cam.train.run`` reads ``resume`` and ``overwrite``).
    """
    cfg = load_config(path)
    overrides = dict(overrides or {})
    defaults = {k: v for sec in sections for k, v in cfg[sec].items()}
    args = argparse.Namespace(**defaults)
    for key, val in overrides.items():
        if key not in defaults:  # as an unknown flag would be
            raise UserError(f"unknown config key {key!r} (sections {', '.join(sections)} of "
                            f"{path})")
        setattr(args, key, _coerce(key, defaults[key], val))
    args = _resolved(cfg, sections, args, str(path), set(overrides))
    for key, val in (attrs or {}).items():
        if hasattr(args, key):  # a config key belongs in overrides (and config_dict)
            raise ValueError(f"attrs: {key!r} is a config key or a resolved attribute")
        setattr(args, key, val)
    return args


def parse_overrides(argv: list[str], sections: list[str], config: str | Path,
                    description: str = "") -> dict[str, Any]:
    """The config flags in ``argv`` (``["--max_epoches", "1"]``) as :func:`resolve_config`
    overrides: typed as the command line types them, ``{leaf}`` references left to resolve."""
    ns = build_parser(load_config(config), sections, description, defaults=False).parse_args(argv)
    return {k: v for k, v in vars(ns).items() if k != "config"}


def _coerce(key: str, default: Any, val: Any) -> Any:
    """An override value as the flag ``--key`` would hold it."""
    if isinstance(val, os.PathLike):
        val = os.fspath(val)
    if not isinstance(val, str):
        return val
    try:
        return _arg_type(default)(val)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise UserError(f"config key {key!r}: {e}") from None


def _resolved(cfg: dict, sections: list[str], args: argparse.Namespace, path: str,
              given: set[str]) -> argparse.Namespace:
    """Write the chosen sections' values back into ``cfg``, expand references, attach."""
    args.config = path
    for sec in sections:
        for key in cfg[sec]:
            cfg[sec][key] = getattr(args, key)
    _interpolate(cfg, args)
    args.config_dict = cfg
    args.config_path = path
    args.given = frozenset(given)
    return args


_REF = re.compile(r"\{(\w+)\}")


def _interpolate(cfg: dict, args: argparse.Namespace) -> None:
    """Expand ``{leaf}`` references in string values (``{voc12_root}/cls_labels.npy``).

    Resolved after the command line, so ``--voc12_root X`` moves every path built on it.
    """
    flat = {k: v for body in cfg.values() for k, v in body.items()}

    def expand(val: Any, depth: int = 0) -> Any:
        if not isinstance(val, str) or "{" not in val or depth > 5:
            return val

        def sub(m: re.Match) -> str:
            if m.group(1) not in flat:
                raise UserError(f"config value {val!r} refers to unknown key {m.group(1)!r}")
            return str(expand(flat[m.group(1)], depth + 1))

        return _REF.sub(sub, val)

    for body in cfg.values():
        for key, val in body.items():
            body[key] = expand(val)
            setattr(args, key, body[key])


def main(argv: list[str] | None = None) -> None:
    """``python -m tool.common.config --config X [--flag V ...] --get key [key ...]``: print
    resolved values as shell assignments (``INFER_LIST='...'``) for the run scripts."""
    import shlex
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--get" not in argv:
        raise UserError("usage: python -m tool.common.config --config FILE [--KEY VALUE ...] "
                        "--get KEY...")
    i = argv.index("--get")
    keys, rest = argv[i + 1:], argv[:i]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=str(CONFIG_DIR / "toy.yaml"))
    sections = list(load_config(pre.parse_known_args(rest)[0].config))
    args = parse_config_args(rest, sections, "", CONFIG_DIR / "toy.yaml")
    for k in keys:
        if not hasattr(args, k):
            raise UserError(f"unknown config key {k!r}")
        print(f"{k.upper()}={shlex.quote(str(getattr(args, k)))}")


if __name__ == "__main__":
    from tool.common.errors import cli_main

    cli_main(main)
