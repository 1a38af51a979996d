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

Every value is typed and range-checked against the schema, from a YAML file, a flag or a library
caller alike (:data:`RULES`, :func:`check_value`): a lossless spelling is converted (``1e-4`` to
a float, ``2`` to ``2.0``), anything else is a one-line UserError naming the key, where it came
from and the value. ``--help`` shows each flag's default and the comment of its base.yaml line.
"""
from __future__ import annotations

import argparse
import copy
import decimal
import functools
import math
import numbers
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tool.common.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
# the sections each stage reads: every leaf of them is a flag of its entry point
TRAIN_SECTIONS = ["run", "data", "model", "train", "schedule", "loss", "plmix", "eval", "quirks"]
INFER_SECTIONS = ["run", "data", "model", "plmix", "eval", "infer"]
SEG_SECTIONS = ["run", "data", "seg"]  # stage 3 (train_seg.py, infer_seg.py)
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")
NONE_WORDS = ("", "none", "null")  # quirk Q7: these mean "not given" for an optional string
AUTO_BOOL = ("auto", "true", "false")  # the choices of an auto-or-boolean key
MAX_THRESHOLDS = 10000  # a threshold sweep's length limit, as tool/eval/evaluation.py's


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


# ---------------------------------------------------------------- value rules


@dataclass(frozen=True)
class Rule:
    """The type and the allowed values of a config key (or of a list key's elements)."""

    kind: str  # bool | int | float | str | list | t_range
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple = ()  # enumerations (strings, or ints for list elements)
    elem: Rule | None = None  # list: the rule of every element
    lengths: tuple[int, ...] = ()  # list: the allowed lengths; () = any but empty
    optional: bool = True  # str: None allowed (null, "None", "" on the command line)

    def bounds(self) -> str:
        """``> 0 and < 1``; empty without bounds."""
        ops = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
        return " and ".join(f"{op} {v:g}" for op, v in ops if v is not None)

    def hint(self, plural: bool = False) -> str:
        """What ``--help`` says about the allowed values (``integer > 0``)."""
        if self.kind == "list":
            n = " or ".join(map(str, self.lengths)) + " " if self.lengths else ""
            return f"list of {n}{self.elem.hint(plural=True)}"
        if self.choices:
            return f"{'values in' if plural else 'one of'} {{{', '.join(map(str, self.choices))}}}"
        names = {"int": "integer", "float": "number", "str": "text", "bool": "boolean",
                 "t_range": "0 <= START < STOP, STEP > 0"}
        name = names[self.kind] + ("s" if plural and self.kind in ("int", "float") else "")
        return f"{name} {self.bounds()}".strip()


def integer(**bounds: float) -> Rule:
    return Rule("int", **bounds)


def number(**bounds: float) -> Rule:
    """A finite float (nan and inf are refused everywhere)."""
    return Rule("float", **bounds)


def one_of(*choices: str) -> Rule:
    return Rule("str", choices=choices, optional=False)


def auto_or_bool() -> Rule:
    """``auto | true | false``: a boolean in any spelling (YAML ``true``, ``--KEY False``,
    ``yes``, ``0``) is taken as the word ``true`` or ``false`` (:func:`check_value`)."""
    return one_of(*AUTO_BOOL)


def list_of(elem: Rule, *lengths: int) -> Rule:
    return Rule("list", elem=elem, lengths=lengths)


TEXT = Rule("str", optional=False)  # a string that must be given (no null)
T_RANGE = Rule("t_range")  # "START:STOP:STEP", 0 <= START < STOP, STEP > 0

# The allowed values of every numeric, list and enumerated key (a test checks that none is
# missing and that base.yaml's defaults pass). Keys not here take the type of their base.yaml
# value: booleans, and strings that may be null (quirk Q7). The enumerations are data, as
# tool/common imports nothing above it (tests/test_layout.py); a test compares them with the
# registries they mirror (net.backbones, tool.cam.losses, tool.crf, tool.common.runtime).
RULES: dict[str, Rule] = {
    # run
    "session_name": TEXT,
    "seed": integer(ge=0),
    "amp_dtype": one_of("auto", "bf16", "fp16"),
    # data
    "voc12_root": TEXT,
    "num_classes": Rule("int", choices=(21, 81)),  # data.description.DESCRIPTIONS
    "crop_size": integer(gt=0),
    "view_size": integer(gt=0),
    "resize_long": list_of(integer(gt=0), 2),
    "view_min_side": integer(gt=0),
    "jitter": list_of(number(ge=0), 4),
    "num_workers": integer(ge=0),
    "threads": integer(ge=0),
    # model
    "backbone": one_of("effb3", "efflite0", "resnet50", "resnet38", "resnet18"),
    "backbone_strides": list_of(Rule("int", choices=(1, 2)), 0, 3),
    "backbone_width": number(gt=0),
    # train
    "batch_size": integer(gt=0),
    "max_epoches": integer(ge=1),
    "lr": number(gt=0),
    "wt_dec": number(ge=0),
    "lr_factor": number(gt=0, lt=1),
    "min_lr": number(ge=0),
    "MaxmIou": number(ge=0, le=100),
    "log_every": integer(ge=1),
    "checkpoint_every": integer(ge=0),
    # schedule (METHOD.md 5.2): 0-based epochs; one past the last epoch = never
    "imc_start": integer(ge=0),
    "mix_start": integer(ge=0),
    "aug_start": integer(ge=0),
    "pixpro_start": integer(ge=0),
    "emd_start": integer(ge=0),
    # loss (METHOD.md 4)
    "focal_alpha": number(gt=0),
    "focal_gamma": number(ge=0),
    "er_topk": number(gt=0, le=1),
    "imc_temperature": number(gt=0),
    "mix_loss": one_of("focal", "ce", "focal_ce"),
    "sc_threshold": number(ge=0),
    "emd_min_size": integer(ge=1),
    "emd_max_aspect": number(ge=1),
    "emd_min_out": integer(ge=1),
    "emd_pool_above": integer(ge=1),
    "emd_pool": integer(ge=1),
    "emd_eps": number(gt=0),
    "emd_iters": integer(ge=1),
    # plmix (METHOD.md 5.5)
    "camT": number(gt=0, lt=1),
    "crf_absent": one_of("merge", "drop"),
    "crf_workers": integer(ge=0),
    "crf_overlap": auto_or_bool(),
    "crf_iters": integer(ge=1),
    "crf_unary_scale": number(gt=0, le=1),
    "crf_gauss_sxy": number(gt=0),
    "crf_gauss_compat": number(ge=0),
    "crf_bi_sxy": number(gt=0),
    "crf_bi_srgb": number(gt=0),
    "crf_bi_compat": number(ge=0),
    # irn (METHOD.md 13)
    "cam_dir": TEXT,
    "ir_label_out_dir": TEXT,
    "conf_fg_thres": number(ge=0, le=1),
    "conf_bg_thres": number(ge=0, le=1),
    "ir_crf_iters": integer(ge=1),
    "ir_crf_gt_prob": number(gt=0, lt=1),
    "ir_crf_gauss_sxy": number(gt=0),
    "ir_crf_gauss_compat": number(ge=0),
    "ir_crf_bi_sxy": number(gt=0),
    "ir_crf_bi_srgb": number(gt=0),
    "ir_crf_bi_compat": number(ge=0),
    "ir_label_workers": integer(ge=0),
    "irn_session": TEXT,
    "irn_backbone": one_of("resnet50", "resnet18"),
    "irn_backbone_width": number(gt=0),
    "irn_crop_size": integer(ge=16),
    "irn_batch_size": integer(gt=0),
    "irn_num_epoches": integer(ge=1),
    "irn_learning_rate": number(gt=0),
    "irn_lr_mult_disp": number(ge=0),
    "irn_weight_decay": number(ge=0),
    "irn_momentum": number(ge=0, lt=1),
    "irn_poly_power": number(ge=0),
    "irn_rescale": list_of(number(gt=0), 2),
    "irn_train_radius": integer(ge=1),
    "irn_mean_shift_list": TEXT,
    "irn_log_every": integer(ge=1),
    "irn_checkpoint_every": integer(ge=0),
    "irn_weights_name": TEXT,
    "sem_seg_out_dir": TEXT,
    "beta": number(gt=0),
    "exp_times": integer(ge=0),
    "sem_seg_bg_thres": number(ge=0, le=1),
    "infer_radius": integer(ge=2),
    "rw_engine": one_of("auto", "dense", "sparse"),
    "edge_grid_cams": one_of("all20", "present"),
    "label_png": one_of("palette", "gray"),
    # seg (METHOD.md 14)
    "seg_arch": one_of("muscle_b7", "deeplabv3_resnet101", "toy"),
    "seg_session": TEXT,
    "seg_toy_width": number(gt=0),
    "seg_train_list": TEXT,
    "seg_val_list": TEXT,
    "seg_infer_list": TEXT,
    "mask_root": TEXT,
    "mask_type": one_of("soft", "png"),
    "seg_crop_size": integer(ge=16),
    "seg_scale_range": list_of(number(gt=0), 2),
    "seg_jitter": list_of(number(ge=0), 4),
    "pad_label": Rule("int", choices=(0, 255)),
    "seg_batch_size": integer(gt=0),
    "seg_num_epoches": integer(ge=1),
    "seg_optimizer": one_of("adam", "sgd"),
    "seg_lr": number(gt=0),
    "seg_trunk_lr_mult": number(gt=0),
    "seg_wt_dec": number(ge=0),
    "seg_momentum": number(ge=0, lt=1),
    "seg_lr_policy": one_of("plateau", "poly"),
    "seg_lr_factor": number(gt=0, lt=1),
    "seg_min_lr": number(ge=0),
    "seg_poly_power": number(ge=0),
    "seg_clip_norm": number(ge=0),
    "lamb": number(ge=0),
    "beacon_k": integer(ge=1),
    "beacon_step": integer(ge=1),
    "beacon_beta": number(gt=0),
    "seg_aux_weight": number(ge=0),
    "seg_output_stride": Rule("int", choices=(8, 16)),
    "seg_seed": integer(ge=0),
    "seg_log_every": integer(ge=1),
    "seg_checkpoint_every": integer(ge=0),
    "seg_weights": TEXT,
    "out_seg": TEXT,
    "seg_scales": list_of(number(gt=0)),
    "seg_label_png": one_of("palette", "gray"),
    # eval
    "val_scales": list_of(number(gt=0)),
    "val_t_range": T_RANGE,
    "infer_scales": list_of(number(gt=0)),
}


def _inferred(default: Any) -> Rule:
    """The rule of a key absent from :data:`RULES`: the type of its base.yaml value."""
    if isinstance(default, bool):
        return Rule("bool")
    if isinstance(default, int):
        return Rule("int")
    if isinstance(default, float):
        return Rule("float")
    if isinstance(default, list):
        return list_of(_inferred(default[0]) if default else Rule("str"))
    return Rule("str")


@functools.cache
def schema_rules() -> dict[str, Rule]:
    """Leaf name -> :class:`Rule`, for every key of base.yaml."""
    defaults = {k: v for body in _read_yaml(BASE_CONFIG).values() for k, v in body.items()}
    unknown = set(RULES) - set(defaults)
    if unknown:
        raise ValueError(f"RULES names keys base.yaml lacks: {sorted(unknown)}")
    return {k: RULES.get(k) or _inferred(v) for k, v in defaults.items()}


def _show(value: Any) -> str:
    """A value as an error message shows it: strings quoted, as written."""
    return repr(value)


def _to_int(value: Any) -> int:
    v = value
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"expected an integer, got {_show(value)}") from None
    if isinstance(v, bool):
        raise ValueError(f"expected an integer, got {_show(value)}")
    if isinstance(v, numbers.Integral):  # numpy integers too
        return int(v)
    if isinstance(v, numbers.Real) and math.isfinite(v) and float(v).is_integer():
        return int(v)  # 2.0 and "1e3" lose nothing
    raise ValueError(f"expected an integer, got {_show(value)}")


def _to_float(value: Any) -> float:
    v = value
    if isinstance(v, str):
        try:
            v = float(v.strip())  # "1e-4": YAML 1.1 reads it as a string
        except ValueError:
            raise ValueError(f"expected a number, got {_show(value)}") from None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"expected a number, got {_show(value)}")
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {_show(value)}")
    return float(v)


def _to_list(rule: Rule, value: Any) -> list:
    if isinstance(value, str):  # the flag's spelling: 448,768 or [448, 768]
        t = value.strip()
        try:
            value = yaml.safe_load(t if t.startswith("[") else f"[{t}]")
        except yaml.YAMLError:
            raise ValueError(f"expected a list like 1,2,3, got {t!r}") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {_show(value)}")
    if rule.lengths and len(value) not in rule.lengths:
        n = " or ".join(map(str, rule.lengths))
        raise ValueError(f"expected {n} values, got {value!r}")
    if not rule.lengths and not value:
        raise ValueError("expected at least one value, got []")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(check_value(rule.elem, v))
        except ValueError as e:
            raise ValueError(f"value {i + 1} of {value!r}: {e}") from None
    return out


def _to_t_range(value: Any) -> str:
    """``START:STOP:STEP``, as tool/eval/evaluation.py's ``parse_t_range`` reads it."""
    text = str(value)
    parts = text.split(":")
    try:
        start, stop, step = (decimal.Decimal(p.strip()) for p in parts)
    except (ValueError, decimal.InvalidOperation):  # not three parts, or not numbers
        raise ValueError(f"expected START:STOP:STEP, got {text!r}") from None
    if not all(v.is_finite() for v in (start, stop, step)):
        raise ValueError(f"expected finite START:STOP:STEP, got {text!r}")
    if not (0 <= start < stop and step > 0):
        raise ValueError(f"expected 0 <= START < STOP and STEP > 0, got {text!r}")
    if (stop - start) / step > MAX_THRESHOLDS:
        raise ValueError(f"{text!r} gives more than {MAX_THRESHOLDS} thresholds")
    return text


def _bool_word(rule: Rule, value: Any) -> Any:
    """A boolean given to an auto-or-boolean key (:func:`auto_or_bool`), as its word."""
    if rule.choices != AUTO_BOOL:
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):  # True, False, YAML 0 / 1
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return "true" if str2bool(value) else "false"
    return value


def check_value(rule: Rule, value: Any) -> Any:
    """``value`` (from YAML, a flag's text or a library caller) converted to the type of
    ``rule`` when that loses nothing, and checked against its range and choices; ValueError
    saying why not."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    given = value  # errors show the value as written
    if rule.kind == "bool":
        if isinstance(value, numbers.Integral) and value in (0, 1):  # True, False, YAML 0 / 1
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return str2bool(value)
        raise ValueError(f"expected a boolean (True/False/1/0/yes/no), got {_show(value)}")
    if rule.kind == "list":
        return _to_list(rule, value)
    if rule.kind == "t_range":
        return _to_t_range(value)
    if rule.kind == "str":
        value = _bool_word(rule, value)
        if value is None or isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            if rule.optional:
                return None
            raise ValueError(f"must be given (not null, None or empty), got {_show(value)}")
        if isinstance(value, bool) or not isinstance(value, str | numbers.Real):
            raise ValueError(f"expected a string, got {_show(value)}")
        value = str(value)  # session_name: 2024
    elif rule.kind == "int":
        value = _to_int(value)
    else:
        value = _to_float(value)
    if rule.choices and value not in rule.choices:
        raise ValueError(f"expected one of {', '.join(map(str, rule.choices))}, "
                         f"got {_show(given)}")
    bounds = ((rule.gt, operator.gt), (rule.ge, operator.ge), (rule.lt, operator.lt),
              (rule.le, operator.le))
    if any(b is not None and not op(value, b) for b, op in bounds):
        raise ValueError(f"must be {rule.bounds()}, got {_show(given)}")
    return value


def checked(key: str, value: Any, where: str) -> Any:
    """:func:`check_value` for config key ``key``; the error names ``where`` the value came
    from (``configs/x.yaml: train.batch_size``, ``--batch_size``)."""
    try:
        return check_value(schema_rules()[key], value)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


# ---------------------------------------------------------------- files


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
    """Recursively override ``base`` with ``over``; keys must exist in ``schema``, values are
    checked against their :data:`RULES` (errors name the file and the key)."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        if key not in schema:
            raise UserError(f"unknown config key '{prefix}{key}' in {where}")
        if isinstance(schema[key], dict):
            if not isinstance(val, dict):
                raise UserError(f"config key '{prefix}{key}' in {where} must be a section")
            out[key] = _merge(out[key], val, schema[key], where, f"{prefix}{key}.")
        else:
            out[key] = checked(key, val, f"{where}: {prefix}{key}")
    return out


def _load_base() -> dict:
    """base.yaml, its values checked as a child config's are."""
    schema = _read_yaml(BASE_CONFIG)
    return _merge(schema, schema, schema, BASE_CONFIG)


def load_config(path: str | Path) -> dict:
    """Load a config file, following its ``_base_`` chain down to ``configs/base.yaml``."""
    path = Path(path)
    schema = _load_base()
    if path.resolve() == BASE_CONFIG:
        return schema
    raw = _read_yaml(path)
    parent = raw.pop("_base_", None)
    base = load_config(path.parent / parent) if parent else schema
    return _merge(base, raw, schema, path)


def leaves(cfg: dict) -> dict[str, tuple[str, Any]]:
    """Flat view: leaf name -> (section, value)."""
    return {k: (sec, v) for sec, body in cfg.items() for k, v in body.items()}


# ---------------------------------------------------------------- help text


_KEY_LINE = re.compile(r"^(\s*)(\w+):(.*)$")


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside a quoted value is no comment."""
    s = text.strip()
    end = s.find(s[0], 1) + 1 if s[:1] in ("'", '"') else 0  # past a quoted scalar
    m = re.search(r"(^|\s)#", s[end:])
    if not m:
        return s, ""
    cut = end + m.start() + len(m.group(1))
    return s[:cut].strip(), s[cut + 1:].strip()


@functools.cache
def schema_help(path: Path = BASE_CONFIG) -> tuple[dict[str, str], dict[str, str]]:
    """(leaf -> description, section -> description) from the trailing ``# comments`` of
    base.yaml (PyYAML drops comments, so its lines are read here). A comment-only line below
    a commented key continues that key's description."""
    keys: dict[str, str] = {}
    sections: dict[str, str] = {}
    last: str | None = None  # the key whose description a comment-only line continues
    for line in Path(path).read_text().splitlines():
        m = _KEY_LINE.match(line)
        if m:
            _, comment = _split_comment(m.group(3))
            if m.group(1):
                keys[m.group(2)] = comment
                last = m.group(2) if comment else None
            else:
                sections[m.group(2)] = comment
                last = None
        elif line.strip().startswith("#") and line[:1].isspace() and last:
            keys[last] += " " + line.strip()[1:].strip()
        else:
            last = None
    return keys, sections


def _metavar(rule: Rule) -> str:
    if rule.kind == "list":
        return "A,B,..."
    if rule.choices:
        return "{" + ",".join(map(str, rule.choices)) + "}"
    return {"bool": "BOOL", "int": "INT", "float": "FLOAT", "t_range": "START:STOP:STEP"}.get(
        rule.kind, "TEXT" if not rule.optional else "TEXT|None")


def _flag_help(key: str) -> str:
    """The base.yaml comment of ``key`` and what its rule allows (argparse adds the default)."""
    rule = schema_rules()[key]
    text = schema_help()[0].get(key, "")
    hint = "" if rule.kind in ("bool", "str") else rule.hint()  # choices: in the metavar
    return "; ".join(p for p in (text, hint) if p).replace("%", "%%")


# ---------------------------------------------------------------- command line


def build_parser(cfg: dict, sections: list[str], description: str, defaults: bool = True,
                 config_default: str | Path | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per leaf of the chosen sections (defaults from cfg).

    Flags hold their text as given: :func:`parse_config_args` checks it against the schema
    (argparse's own type errors would be a usage screen, not one line naming the key).
    ``defaults=False``: no defaults at all (``argparse.SUPPRESS``), so a parse holds exactly
    the flags given, however spelled (``--camT=0.3``, ``--cam 0.3``). ``config_default`` is
    what ``--help`` shows as the default of ``--config``.
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="%(prog)s [-h] [--config FILE] [--KEY VALUE ...]")
    p.add_argument("--config", metavar="FILE",
                   default=None if config_default is None else str(config_default),
                   help="YAML config (see configs/); the defaults below are its values")
    rules = schema_rules()
    section_help = schema_help()[1]
    for sec in sections:
        g = p.add_argument_group(sec, section_help.get(sec) or None)
        for key, val in cfg[sec].items():
            kw: dict[str, Any] = {"default": val if defaults else argparse.SUPPRESS,
                                  "metavar": _metavar(rules[key]), "help": _flag_help(key)}
            if rules[key].kind == "bool":
                kw.update(nargs="?", const=True)
            g.add_argument(f"--{key}", **kw)
    return p


def _check_flags(ns: argparse.Namespace, keys: list[str]) -> None:
    """Convert and check, in place, the flags of ``keys`` that ``ns`` holds."""
    for key in keys:
        if hasattr(ns, key):
            setattr(ns, key, checked(key, getattr(ns, key), f"--{key}"))


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
    parsers = [build_parser(cfg, sections, description, defaults=d,
                            config_default=default_config) for d in (True, False)]
    if extra is not None:
        for p in parsers:
            extra(p)
    args = parsers[0].parse_args(argv)
    # the same parse without defaults holds what the command line set: argparse itself
    # resolves every spelling (``--camT=0.3``, abbreviations), which a scan of argv would not
    keys = [k for sec in sections for k in cfg[sec]]
    given = set(keys) & set(vars(parsers[1].parse_args(argv)))
    _check_flags(args, [k for k in keys if k in given])
    return _resolved(cfg, sections, args, known.config, given)


def resolve_config(path: str | Path, sections: list[str],
                   overrides: dict[str, Any] | None = None,
                   attrs: dict[str, Any] | None = None) -> argparse.Namespace:
    """The Namespace :func:`parse_config_args` makes, from values instead of flags.

    ``overrides`` play the command line: keys of the chosen sections (any other is a UserError),
    strings parsed as the flag would parse them (``"False"``, ``"448,768"``, ``"None"``),
    paths as strings, other values as given; every value is checked as a flag's would be, and
    ``args.given`` names them. ``attrs`` are set on the Namespace as they are: the entry-point
    flags a library function reads (``tool.cam.train.run`` reads ``resume`` and ``overwrite``).
    """
    cfg = load_config(path)
    overrides = dict(overrides or {})
    defaults = {k: v for sec in sections for k, v in cfg[sec].items()}
    args = argparse.Namespace(**defaults)
    for key, val in overrides.items():
        if key not in defaults:  # as an unknown flag would be
            raise UserError(f"unknown config key {key!r} (sections {', '.join(sections)} of "
                            f"{path})")
        setattr(args, key, checked(key, val, f"config key {key!r}"))
    args = _resolved(cfg, sections, args, str(path), set(overrides))
    for key, val in (attrs or {}).items():
        if hasattr(args, key):  # a config key belongs in overrides (and config_dict)
            raise ValueError(f"attrs: {key!r} is a config key or a resolved attribute")
        setattr(args, key, val)
    return args


def parse_entry_args(argv: list[str], sections: list[str], doc: str, overwrite_help: str,
                     resume_help: str | None = None,
                     more: Callable[[argparse.ArgumentParser], None] | None = None
                     ) -> argparse.Namespace:
    """The flags of a stage-2/3 entry point: its config ``sections``, ``--overwrite``, for a
    trainer (``resume_help``) ``--resume [CKPT]``, and what ``more(parser)`` adds."""

    def extra(p: argparse.ArgumentParser) -> None:
        if more is not None:
            more(p)
        if resume_help is not None:
            p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                           help=resume_help)
        p.add_argument("--overwrite", action="store_true", help=overwrite_help)

    return parse_config_args(argv, sections, doc.splitlines()[0], "configs/toy.yaml", extra)


def parse_overrides(argv: list[str], sections: list[str], config: str | Path,
                    description: str = "") -> dict[str, Any]:
    """The config flags in ``argv`` (``["--max_epoches", "1"]``) as :func:`resolve_config`
    overrides: typed and checked as the command line does, ``{leaf}`` references left to
    resolve."""
    cfg = load_config(config)
    ns = build_parser(cfg, sections, description, defaults=False).parse_args(argv)
    _check_flags(ns, [k for sec in sections for k in cfg[sec]])
    return {k: v for k, v in vars(ns).items() if k != "config"}


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


def config_flags(argv: list[str], cfg: dict) -> list[str]:
    """``argv`` without the flags that are not config keys (an entry point's own, such as
    ``--overwrite``), each with its value if it has one: a run script hands its extra
    arguments to an entry point and here alike."""
    known = {f"--{k}" for k in leaves(cfg)} | {"--config"}
    out, keep = [], False
    for a in argv:
        if a.startswith("--"):
            keep = a.split("=", 1)[0] in known
        if keep:
            out.append(a)
    return out


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
    cfg = load_config(pre.parse_known_args(rest)[0].config)
    args = parse_config_args(config_flags(rest, cfg), list(cfg), "", CONFIG_DIR / "toy.yaml")
    for k in keys:
        if not hasattr(args, k):
            raise UserError(f"unknown config key {k!r}")
        print(f"{k.upper()}={shlex.quote(str(getattr(args, k)))}")


if __name__ == "__main__":
    from tool.common.errors import cli_main

    cli_main(main)
