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


# ------------------------------------------------------------------------ COCO: 81 classes


def test_toy_segnet_has_num_classes_outputs():
    torch.manual_seed(0)
    net = SegNet("toy", num_classes=81, toy_width=0.25)
    x = torch.randn(2, 3, 40, 56)
    out = net.forward_train(x)
    assert net.num_classes == 81 and out["out"].shape == (2, 81, 40, 56)
    assert out["dense_ft"].shape == (2, 32, 40, 56)
    assert net.eval()(x[:1]).shape == (1, 81, 40, 56)


@pytest.fixture(scope="module")
def weights_81(tmp_path_factory):
    """A toy SegNet over 81 classes whose head says class 80 (the last channel) everywhere:
    zero 1x1 weights, so the logits are the bias alone, highest at 80."""
    torch.manual_seed(0)
    net = SegNet("toy", num_classes=81, toy_width=0.25)
    with torch.no_grad():
        net.fuse_dec.weight.zero_()
        net.fuse_dec.bias.zero_()
        net.fuse_dec.bias[80] = 5.0
    path = tmp_path_factory.mktemp("seg_infer_81") / "last.ckpt"
    torch.save({"model": net.state_dict(), "epoch": 0}, path)
    return path


def test_coco_predictions_over_81_classes(tiny_config, weights_81, toy_voc, tmp_path):
    """num_classes 81: the network, the 81-label CRF and the argmax give class 80 (the last
    channel) everywhere; the PNGs are palettised with the description's palette."""
    from data.description import describe

    out = tmp_path / "pred"
    assert infer(tiny_config, weights_81, out, "--num_classes", "81") == 4
    for n in load_img_name_list(toy_voc / "ImageSets/Segmentation/train.txt"):
        with Image.open(out / f"{n}.png") as im:
            assert im.mode == "P" and im.getpalette()[:768] == describe(81).palette()
            assert (np.array(im) == 80).all()


def test_checkpoint_of_another_class_count_is_one_line(tiny_config, weights, weights_81,
                                                       tmp_path):
    for path, flag, found, want in ((weights, "81", 21, 81), (weights_81, "21", 81, 21)):
        with pytest.raises(UserError) as e:
            infer(tiny_config, path, tmp_path / "x", "--num_classes", flag)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg
        assert f"of {found} classes but num_classes is {want}" in msg
    assert not list((tmp_path / "x").glob("*.png"))


def test_coco_refuses_the_voc_test_submission(tiny_config, weights_81, tmp_path):
    with pytest.raises(UserError, match="--test_submission") as e:
        infer(tiny_config, weights_81, tmp_path / "p", "--num_classes", "81",
              "--test_submission", str(tmp_path / "sub"))
    assert "81" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "p").exists() and not (tmp_path / "sub").exists()
