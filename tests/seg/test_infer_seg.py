"""Stage-3 inference over a list (METHOD.md 14.6): ``infer_seg.py`` on the toy VOC set with a
randomly initialised toy SegNet saved in the engine's checkpoint format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import infer_seg
from data.voc import load_img_name_list
from net.seg_net import SegNet
from tool.common.errors import UserError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg_infer") / "last.ckpt"
    torch.save({"model": SegNet("toy", toy_width=0.25).state_dict(), "epoch": 0}, path)
    return path


def infer(tiny_config, weights, out, *more: str) -> int:
    return infer_seg.main(["--config", str(tiny_config), "--seg_weights", str(weights),
                           "--out_seg", str(out), "--device", "cpu", *more])


def test_writes_resumes_and_records(tiny_config, weights, toy_voc, tmp_path):
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/train.txt")  # seg_infer_list
    out = tmp_path / "pred"
    assert infer(tiny_config, weights, out, "--test_submission", str(tmp_path / "sub")) == 4
    for n in names:
        with Image.open(out / f"{n}.png") as im, \
                Image.open(toy_voc / "JPEGImages" / f"{n}.jpg") as img:
            assert im.mode == "P" and im.size == img.size
            assert np.array(im).max() <= 20
        sub = tmp_path / "sub/results/VOC2012/Segmentation/comp6_test_cls" / f"{n}.png"
        with Image.open(sub) as s, Image.open(out / f"{n}.png") as p:
            assert s.mode == "P" and np.array_equal(np.array(s), np.array(p))
    record = json.loads((out / ".provenance.json").read_text())["outputs"]["seg_png"]
    assert record["seg_crf"] is True and record["seg_arch"] == "toy"
    assert infer(tiny_config, weights, out) == 0  # finished images are skipped
    with pytest.raises(UserError, match="other settings"):
        infer(tiny_config, weights, out, "--seg_crf", "False")
    assert infer(tiny_config, weights, out, "--seg_crf", "False", "--overwrite") == 4


def test_gray_pngs(tiny_config, weights, tmp_path):
    infer(tiny_config, weights, tmp_path / "g", "--seg_label_png", "gray", "--seg_crf", "False")
    with Image.open(next((tmp_path / "g").glob("*.png"))) as im:
        assert im.mode == "L"


def test_checkpoint_of_another_arch_is_one_line(tiny_config, weights, tmp_path):
    with pytest.raises(UserError) as e:
        infer(tiny_config, weights, tmp_path / "x", "--seg_arch", "deeplabv3_resnet101")
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "x").glob("*.png"))


def test_missing_weights_before_compute(tiny_config, tmp_path):
    with pytest.raises(UserError, match="--seg_weights file not found"):
        infer(tiny_config, tmp_path / "none.ckpt", tmp_path / "y")
    assert not (tmp_path / "y").exists()
