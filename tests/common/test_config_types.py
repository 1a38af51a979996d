"""Config values are typed and range-checked against the schema (configs/base.yaml + RULES),
from YAML, flags and library overrides alike; ``--help`` describes every flag."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tool.common.config import (
    CONFIG_DIR,
    RULES,
    check_value,
    leaves,
    load_config,
    parse_config_args,
    parse_overrides,
    resolve_config,
    schema_help,
)
from tool.common.errors import UserError

ROOT = CONFIG_DIR.parent
ALL = ["run", "data", "model", "train", "schedule", "loss", "plmix", "eval", "infer", "quirks",
       "irn"]


def _child(tmp_path, body: str, name: str = "x.yaml"):
    """A config over toy.yaml whose data root does not exist (nothing can train from it)."""
    p = tmp_path / name
    p.write_text(f"_base_: {CONFIG_DIR / 'toy.yaml'}\ndata:\n  voc12_root: {tmp_path / 'none'}\n"
                 + body)
    return p


# (section, key, value as written in YAML, the error after "<file>: <section>.<key>: ")
BAD_YAML = [
    ("train", "batch_size", "four", "expected an integer, got 'four'"),
    ("train", "batch_size", "true", "expected an integer, got True"),
    ("train", "batch_size", "0", "must be > 0, got 0"),
    ("train", "max_epoches", "2.5", "expected an integer, got 2.5"),
    ("train", "max_epoches", "0", "must be >= 1, got 0"),
    ("train", "lr", "fast", "expected a number, got 'fast'"),
    ("train", "lr", ".nan", "expected a finite number, got nan"),
    ("train", "lr", ".inf", "expected a finite number, got inf"),
    ("train", "lr", "0", "must be > 0, got 0"),
    ("train", "wt_dec", "-1.0e-6", "must be >= 0, got -1e-06"),
    ("train", "lr_factor", "1", "must be > 0 and < 1, got 1"),
    ("train", "min_lr", "-1", "must be >= 0, got -1"),
    ("train", "log_every", "0", "must be >= 1, got 0"),
    ("train", "checkpoint_every", "-1", "must be >= 0, got -1"),
    ("train", "MaxmIou", "150", "must be >= 0 and <= 100, got 150"),
    ("run", "seed", "-1", "must be >= 0, got -1"),
    ("run", "amp_dtype", "fp8", "expected one of auto, bf16, fp16, got 'fp8'"),
    ("run", "session_name", "null", "must be given (not null, None or empty), got None"),
    ("data", "crop_size", "0", "must be > 0, got 0"),
    ("data", "view_size", "-64", "must be > 0, got -64"),
    ("data", "num_workers", "-1", "must be >= 0, got -1"),
    ("data", "resize_long", "[448]", "expected 2 values, got [448]"),
    ("data", "jitter", "[0.2, 0.2, 0.2, -0.1]",
     "value 4 of [0.2, 0.2, 0.2, -0.1]: must be >= 0, got -0.1"),
    ("model", "backbone", "vgg16",
     "expected one of effb3, efflite0, resnet50, resnet38, resnet18, got 'vgg16'"),
    ("model", "backbone_strides", "[2, 4, 1]", "value 2 of [2, 4, 1]: expected one of 1, 2, got 4"),
    ("schedule", "mix_start", "-1", "must be >= 0, got -1"),
    ("loss", "mix_loss", "dice", "expected one of focal, ce, focal_ce, got 'dice'"),
    ("loss", "er_topk", "1.5", "must be > 0 and <= 1, got 1.5"),
    ("plmix", "camT", "2", "must be > 0 and < 1, got 2"),
    ("plmix", "crf", "maybe", "expected a boolean (True/False/1/0/yes/no), got 'maybe'"),
    ("plmix", "crf_absent", "keep", "expected one of merge, drop, got 'keep'"),
    ("plmix", "crf_workers", "-1", "must be >= 0, got -1"),
    ("plmix", "crf_overlap", "maybe", "expected one of auto, true, false, got 'maybe'"),
    ("plmix", "crf_overlap", "2", "expected one of auto, true, false, got 2"),
    ("plmix", "crf_iters", "0", "must be >= 1, got 0"),
    ("eval", "val_t_range", '"0.5:0.2:0.02"',
     "expected 0 <= START < STOP and STEP > 0, got '0.5:0.2:0.02'"),
    ("eval", "val_scales", "[]", "expected at least one value, got []"),
]


@pytest.mark.parametrize("sec,key,text,reason", BAD_YAML,
                         ids=[f"{k}={t}" for _, k, t, _ in BAD_YAML])
def test_bad_yaml_value_names_file_key_and_value(tmp_path, sec, key, text, reason):
    path = _child(tmp_path, f"{sec}:\n  {key}: {text}\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {sec}.{key}: {reason}"


# (flag, value as typed on the command line, the error after "--<flag>: ")
BAD_FLAGS = [
    ("batch_size", "four", "expected an integer, got 'four'"),
    ("max_epoches", "0", "must be >= 1, got '0'"),
    ("max_epoches", "2.5", "expected an integer, got '2.5'"),
    ("camT", "2", "must be > 0 and < 1, got '2'"),
    ("lr", "nan", "expected a finite number, got 'nan'"),
    ("lr", "-0.1", "must be > 0, got '-0.1'"),
    ("lr_factor", "0", "must be > 0 and < 1, got '0'"),
    ("mix_loss", "dice", "expected one of focal, ce, focal_ce, got 'dice'"),
    ("backbone", "vgg16",
     "expected one of effb3, efflite0, resnet50, resnet38, resnet18, got 'vgg16'"),
    ("resize_long", "448,x", "value 2 of [448, 'x']: expected an integer, got 'x'"),
    ("session_name", "None", "must be given (not null, None or empty), got 'None'"),
    ("val_t_range", "0.2:0.5", "expected START:STOP:STEP, got '0.2:0.5'"),
    ("val_t_range", "0.2:0.5:0", "expected 0 <= START < STOP and STEP > 0, got '0.2:0.5:0'"),
    ("num_classes", "20", "expected one of 21, 81, got '20'"),  # no data set has 20
]


@pytest.mark.parametrize("key,text,reason", BAD_FLAGS, ids=[f"{k}={t}" for k, t, _ in BAD_FLAGS])
def test_bad_flag_names_the_flag_and_value(key, text, reason):
    want = f"--{key}: {reason}"
    with pytest.raises(UserError) as e:
        parse_config_args([f"--{key}", text], ALL, "t", CONFIG_DIR / "toy.yaml")
    assert str(e.value) == want
    with pytest.raises(UserError) as e:  # the library spelling of the same flags
        parse_overrides([f"--{key}={text}"], ALL, CONFIG_DIR / "toy.yaml")
    assert str(e.value) == want


@pytest.mark.parametrize("over,reason", [
    ({"camT": 2.0}, "config key 'camT': must be > 0 and < 1, got 2.0"),
    ({"max_epoches": 0}, "config key 'max_epoches': must be >= 1, got 0"),
    ({"batch_size": 2.5}, "config key 'batch_size': expected an integer, got 2.5"),
    ({"crf_absent": "keep"}, "config key 'crf_absent': expected one of merge, drop, got 'keep'"),
])
def test_bad_library_override_is_checked_too(over, reason):
    with pytest.raises(UserError) as e:
        resolve_config(CONFIG_DIR / "toy.yaml", ALL, over)
    assert str(e.value) == reason


def test_lossless_yaml_spellings_are_converted(tmp_path):
    path = _child(tmp_path, "run:\n  session_name: 2024\n  weights: None\n"
                            "train:\n  lr: 1e-4\n  min_lr: 0\n  max_epoches: 2.0\n  MaxmIou: 50\n"
                            "plmix:\n  crf: 0\n  plmix: 'False'\n  Random_order: yes\n"
                            "  crf_overlap: true\n"
                            "data:\n  resize_long: '96,128'\n"
                            "eval:\n  val_scales: [1]\n")
    cfg = load_config(path)
    assert cfg["train"]["lr"] == 1e-4 and type(cfg["train"]["lr"]) is float
    assert type(cfg["train"]["min_lr"]) is float and type(cfg["train"]["MaxmIou"]) is float
    assert cfg["train"]["max_epoches"] == 2 and type(cfg["train"]["max_epoches"]) is int
    assert cfg["plmix"]["crf"] is False and cfg["plmix"]["plmix"] is False
    assert cfg["plmix"]["Random_order"] is True
    assert cfg["plmix"]["crf_overlap"] == "true"  # auto | true | false: booleans as the words
    assert cfg["run"]["session_name"] == "2024" and cfg["run"]["weights"] is None
    assert cfg["data"]["resize_long"] == [96, 128]
    assert cfg["eval"]["val_scales"] == [1.0] and type(cfg["eval"]["val_scales"][0]) is float
    # the flag of a key the file spelled as a string is still typed by the schema
    args = parse_config_args(["--config", str(path), "--lr", "0.001", "--max_epoches", "3.0"],
                             ALL, "t", CONFIG_DIR / "toy.yaml")
    assert args.lr == 0.001 and type(args.lr) is float
    assert args.max_epoches == 3 and type(args.max_epoches) is int
    for flag, want in (("False", "false"), ("yes", "true"), ("1", "true"), ("auto", "auto")):
        args = parse_config_args(["--config", str(path), "--crf_overlap", flag], ALL, "t",
                                 CONFIG_DIR / "toy.yaml")
        assert args.crf_overlap == want, flag


def test_every_float_key_accepts_an_integer():
    """A float key takes ``2`` as ``2.0`` whatever its base.yaml default looks like."""
    args = resolve_config(CONFIG_DIR / "toy.yaml", ALL, {"MaxmIou": "5", "backbone_width": 2})
    assert type(args.MaxmIou) is float and type(args.backbone_width) is float
    for key, rule in RULES.items():
        ints = [i for i in (0, 1, 2, 10) if _passes(rule, i)]
        if rule.kind == "float" and ints:  # (0 < camT < 1 holds no integer)
            assert type(check_value(rule, ints[0])) is float, key
            assert type(check_value(rule, str(ints[0]))) is float, key


def _passes(rule, value) -> bool:
    try:
        check_value(rule, value)
    except ValueError:
        return False
    return True


def test_every_numeric_and_list_key_has_a_declared_rule():
    for key, (_, value) in leaves(load_config(CONFIG_DIR / "base.yaml")).items():
        if isinstance(value, int | float | list) and not isinstance(value, bool):
            assert key in RULES, f"{key}: declare its type and range in config.RULES"


def test_enumerations_mirror_the_registries():
    from data.description import DESCRIPTIONS
    from net.backbones import BACKBONES
    from tool.cam.losses import MIX_SEG_KINDS
    from tool.cam.step import OVERLAP_MODES
    from tool.common.runtime import AMP_DTYPES
    from tool.crf import ABSENT_MODES
    from tool.irn.random_walk import ENGINES

    assert set(RULES["backbone"].choices) == set(BACKBONES)
    assert RULES["mix_loss"].choices == MIX_SEG_KINDS
    assert RULES["crf_absent"].choices == ABSENT_MODES
    assert set(RULES["amp_dtype"].choices) == {"auto", *AMP_DTYPES}
    assert RULES["rw_engine"].choices == ENGINES
    assert RULES["crf_overlap"].choices == OVERLAP_MODES
    assert set(RULES["num_classes"].choices) == set(DESCRIPTIONS)


def _cli(tmp_path, *argv):
    return subprocess.run([sys.executable, "train_mcl.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv,message", [
    (["--max_epoches", "0"], "error: --max_epoches: must be >= 1, got '0'"),
    (["--camT", "2"], "error: --camT: must be > 0 and < 1, got '2'"),
    (["--val_t_range", "0.5:0.2:0.02"],
     "error: --val_t_range: expected 0 <= START < STOP and STEP > 0, got '0.5:0.2:0.02'"),
], ids=["max_epoches", "camT", "val_t_range"])
def test_cli_exits_2_with_one_line_and_writes_nothing(tiny_config, tmp_path, argv, message):
    run = tmp_path / "run"  # the tiny config trains (it would, with these values, before)
    r = _cli(tmp_path, "--config", str(tiny_config), "--session_name", str(run), *argv)
    assert (r.returncode, r.stderr.splitlines()) == (2, [message])
    assert not run.exists()


def test_cli_bad_yaml_value(tmp_path):
    path = _child(tmp_path, "train:\n  batch_size: four\n")
    r = _cli(tmp_path, "--config", str(path), "--session_name", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: {path}: train.batch_size: expected an integer, "
                                     "got 'four'"]
    assert not (tmp_path / "run").exists()


def _help(module: str) -> str:
    r = subprocess.run([sys.executable, f"{module}.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    return re.sub(r"\s+", " ", r.stdout)


def test_help_shows_descriptions_and_defaults():
    text = _help("train_mcl")
    assert "--config FILE YAML config (see configs/); the defaults below are its values " \
           "(default: configs/toy.yaml)" in text
    assert "--lr FLOAT Adam learning rate (METHOD.md 5.1); number > 0 (default: 0.001)" in text
    assert "--camT FLOAT initial background threshold" in text
    assert "number > 0 and < 1 (default: 0.3)" in text
    assert "--mix_loss {focal,ce,focal_ce}" in text
    assert "schedule: 0-based start epochs (METHOD.md 5.2)" in text
    infer = _help("infer_cam")
    assert "--infer_scales A,B,... infer_cam.py: image scales, each + flip; list of numbers > 0 " \
           "(default: [0.75, 1.0, 1.25, 1.5])" in infer
    assert "--max_epoches" not in infer  # infer_cam has no train section


def test_every_key_has_a_description():
    keys, _ = schema_help()
    base = leaves(load_config(CONFIG_DIR / "base.yaml"))
    assert set(keys) == set(base)
    assert not [k for k, text in keys.items() if not text]
    assert keys["select_with_gt"].endswith("picks best (METHOD.md 5.6)")  # continued lines


def test_library_overrides_of_numpy_scalars_become_python_numbers():
    import numpy as np

    args = resolve_config(CONFIG_DIR / "toy.yaml", ALL,
                          {"max_epoches": np.int64(3), "lr": np.float32(0.5), "camT": 1 / 4})
    assert type(args.max_epoches) is int and type(args.lr) is float and args.camT == 0.25
