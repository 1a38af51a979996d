"""The configuration system: schema, _base_ chains, flag overrides, D4 booleans, errors."""
from __future__ import annotations

import argparse

import pytest

from tool.common.config import CONFIG_DIR, leaves, load_config, parse_config_args, str2bool
from tool.common.errors import UserError

ALL = ["run", "data", "model", "train", "schedule", "loss", "plmix", "eval", "infer", "quirks"]


def test_leaf_names_unique_across_sections():
    cfg = load_config(CONFIG_DIR / "base.yaml")
    names = [k for body in cfg.values() for k in body]
    assert len(names) == len(set(names))
    assert sorted(cfg) == sorted(ALL)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert set(leaves(cfg)) == set(leaves(load_config(CONFIG_DIR / "base.yaml")))


@pytest.mark.parametrize("word,value", [("True", True), ("false", False), ("1", True),
                                        ("0", False), ("yes", True), ("no", False)])
def test_str2bool_accepts_released_spellings(word, value):
    assert str2bool(word) is value


def test_str2bool_rejects_other_words():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_flags_override_and_types(tmp_path):
    args = parse_config_args(
        ["--config", str(CONFIG_DIR / "base.yaml"), "--crf", "False", "--camT", "0.25",
         "--batch_size", "8", "--resize_long", "128,224", "--weights", "None", "--Random_order"],
        ALL, "t", CONFIG_DIR / "base.yaml")
    assert args.crf is False and args.Random_order is True  # bare flag = on
    assert args.camT == 0.25 and args.batch_size == 8 and args.resize_long == [128, 224]
    assert args.weights is None  # quirk Q7: the string "None" means no weights
    assert args.config_dict["plmix"]["crf"] is False


def test_interpolation_follows_command_line():
    args = parse_config_args(["--voc12_root", "/data/VOC", "--session_name", "runs/x"],
                             ALL, "t", CONFIG_DIR / "base.yaml")
    assert args.gt == "/data/VOC/SegmentationClass"
    assert args.out_npy == "runs/x/npy_sgc"


def test_unknown_key_in_file_is_an_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(f"_base_: {CONFIG_DIR / 'base.yaml'}\ntrain:\n  max_epochs: 3\n")
    with pytest.raises(UserError, match="unknown config key 'train.max_epochs'"):
        load_config(p)


def test_unknown_flag_exits(capsys):
    with pytest.raises(SystemExit):
        parse_config_args(["--max_epochs", "3"], ALL, "t", CONFIG_DIR / "base.yaml")
    assert "unrecognized arguments: --max_epochs" in capsys.readouterr().err


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        parse_config_args(["--config", "nope.yaml"], ALL, "t", CONFIG_DIR / "base.yaml")


def test_get_prints_shell_assignments(capsys):
    from tool.common.config import main

    main(["--config", str(CONFIG_DIR / "voc12_effb3.yaml"), "--voc12_root", "/d/VOC 2012",
          "--get", "gt", "session_name"])
    assert capsys.readouterr().out.splitlines() == [
        "GT='/d/VOC 2012/SegmentationClass'", "SESSION_NAME=runs/voc12_effb3"]


def test_run_scripts_are_valid_bash():
    import subprocess

    for script in ("run_train.sh", "run_infer.sh", "tool/launcher.sh"):
        assert subprocess.run(["bash", "-n", str(CONFIG_DIR.parent / script)]).returncode == 0
