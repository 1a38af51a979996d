"""The configuration system: schema, _base_ chains, flag overrides, D4 booleans, errors."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tool.common.config import (
    CONFIG_DIR,
    TRAIN_SECTIONS,
    leaves,
    load_config,
    parse_config_args,
    parse_overrides,
    resolve_config,
    str2bool,
)
from tool.common.errors import UserError

ALL = ["run", "data", "model", "train", "schedule", "loss", "plmix", "eval", "infer", "quirks",
       "irn", "seg"]


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


@pytest.mark.parametrize("argv", [["--camT", "0.3"], ["--camT=0.3"], ["--cam", "0.3"],
                                  ["--camT=0.3", "--crf"], ["--crf", "--camT", "0.3"]],
                         ids=["space", "equals", "abbreviated", "bare-bool-after", "bare-bool"])
def test_given_names_the_keys_the_command_line_set(argv):
    # the training flags: with every section, --cam would also match stage 2's --cam_dir
    args = parse_config_args(["--config", str(CONFIG_DIR / "toy.yaml"), *argv], TRAIN_SECTIONS,
                             "t", CONFIG_DIR / "base.yaml")
    assert args.camT == 0.3
    assert args.given == ({"camT", "crf"} if "--crf" in argv else {"camT"})
    assert "config" not in args.given  # the config file is no config key


def test_given_is_empty_without_flags_even_when_a_value_equals_the_default():
    base = load_config(CONFIG_DIR / "base.yaml")
    assert parse_config_args([], ALL, "t", CONFIG_DIR / "base.yaml").given == frozenset()
    args = parse_config_args(["--camT", str(base["plmix"]["camT"])], ALL, "t",
                             CONFIG_DIR / "base.yaml")
    assert args.given == {"camT"}  # given, though equal to the default


def test_given_ignores_entry_point_flags():
    def extra(p):
        p.add_argument("--resume", action="store_true")

    args = parse_config_args(["--resume", "--seed", "1"], ALL, "t", CONFIG_DIR / "base.yaml",
                             extra)
    assert args.resume is True and args.given == {"seed"}


def test_resolve_config_equals_the_command_line():
    argv = ["--config", str(CONFIG_DIR / "toy.yaml"), "--voc12_root", "/d/v", "--crf", "False",
            "--resize_long", "96,128", "--weights", "None", "--max_epoches", "2"]
    want = parse_config_args(argv, ALL, "t", CONFIG_DIR / "base.yaml")
    got = resolve_config(CONFIG_DIR / "toy.yaml", ALL,
                         {"voc12_root": Path("/d/v"), "crf": "False", "resize_long": [96, 128],
                          "weights": "None", "max_epoches": 2})
    assert vars(got) == vars(want)
    assert got.train_list == "/d/v/ImageSets/Segmentation/train_aug.txt"  # interpolated
    assert got.config_dict["data"]["voc12_root"] == "/d/v"
    assert got.given == {"voc12_root", "crf", "resize_long", "weights", "max_epoches"}


def test_resolve_config_errors_and_attrs():
    with pytest.raises(UserError, match="unknown config key 'max_epochs'"):
        resolve_config(CONFIG_DIR / "toy.yaml", ALL, {"max_epochs": 3})
    with pytest.raises(UserError, match="unknown config key 'max_epoches'"):  # not its section
        resolve_config(CONFIG_DIR / "toy.yaml", ["run", "infer"], {"max_epoches": 3})
    with pytest.raises(UserError, match="config key 'crf'.*expected a boolean"):
        resolve_config(CONFIG_DIR / "toy.yaml", ALL, {"crf": "maybe"})
    args = resolve_config(CONFIG_DIR / "toy.yaml", ALL, attrs={"resume": True})
    assert args.resume is True and args.given == frozenset()
    with pytest.raises(ValueError, match="'seed' is a config key"):
        resolve_config(CONFIG_DIR / "toy.yaml", ALL, attrs={"seed": 1})


def test_parse_overrides_gives_the_flags_as_values():
    over = parse_overrides(["--max_epoches", "1", "--crf", "--train_list={voc12_root}/x.txt"],
                           ALL, CONFIG_DIR / "toy.yaml")
    assert over == {"max_epoches": 1, "crf": True, "train_list": "{voc12_root}/x.txt"}
    args = resolve_config(CONFIG_DIR / "toy.yaml", ALL, {**over, "voc12_root": "/v"})
    assert args.train_list == "/v/x.txt"  # the reference resolves against the final root
    assert parse_overrides([], ALL, CONFIG_DIR / "toy.yaml") == {}


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

    for script in ("run_train.sh", "run_infer.sh", "run_refine.sh", "tool/launcher.sh"):
        assert subprocess.run(["bash", "-n", str(CONFIG_DIR.parent / script)]).returncode == 0


def test_get_takes_a_run_scripts_extra_arguments(capsys):
    """run_infer.sh passes its arguments to inference and to ``--get`` alike: the evaluation
    then reads the list inference used, and entry-point flags are ignored here."""
    from tool.common import config

    config.main(["--config", "configs/toy.yaml", "--infer_list", "other.txt", "--overwrite",
                 "--crf", "--get", "infer_list", "crf"])
    assert capsys.readouterr().out.split() == ["INFER_LIST=other.txt", "CRF=True"]
