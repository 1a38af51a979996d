"""Checkpoints saved as the released code saves them load for inference and as training init.

The released ``EfficientSeg`` (and MuSCLe's MCL network) hold the whole efficientnet-pytorch B3,
head and classifier included, plus an unused decoder classifier ``fuse_dec``; the test builds
exactly that key set from the package's own model instead of wrapping our state dict.
"""
from __future__ import annotations

import logging

import pytest
import torch
from efficientnet_pytorch import EfficientNet

import infer_cam
import train_mcl
from net.cam_net import CAMNet
from net.weights import RELEASED_UNUSED, load_cam_weights
from tool.common.errors import UserError

UNUSED = {"backbone._conv_head.weight", "backbone._bn1.weight", "backbone._bn1.bias",
          "backbone._bn1.running_mean", "backbone._bn1.running_var",
          "backbone._bn1.num_batches_tracked", "backbone._fc.weight", "backbone._fc.bias",
          "fuse_dec.weight", "fuse_dec.bias"}


@pytest.fixture(scope="module")
def released() -> tuple[CAMNet, dict[str, torch.Tensor]]:
    """An effb3 CAMNet and the released network's full state dict holding its weights."""
    torch.manual_seed(0)
    net = CAMNet("effb3")
    package = EfficientNet.from_name("efficientnet-b3", num_classes=1000).state_dict()
    state = {f"backbone.{k}": torch.randn_like(v.float()).to(v.dtype)
             for k, v in package.items()}
    state |= net.state_dict()  # the parts both networks share carry our weights
    state |= {"fuse_dec.weight": torch.randn(21, 256, 1, 1), "fuse_dec.bias": torch.randn(21)}
    return net, state


LAYOUTS = {
    "released": lambda s: {"model_state_dict": s, "optimizer_state_dict": {"state": {}},
                           "iteration": 29},
    "muscle_wrapped": lambda s: {"state_dict": s},
    "plain": lambda s: s,
}


def test_released_key_set_is_ours_plus_the_unused_parts(released):
    net, state = released
    extra = set(state) - set(net.state_dict())
    assert extra == UNUSED
    assert all(k.startswith(RELEASED_UNUSED) for k in extra)
    assert set(net.state_dict()) <= set(state)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_released_layouts_load_and_name_ignored_keys(tmp_path, released, layout, caplog):
    net, state = released
    path = tmp_path / f"{layout}.ckpt"
    torch.save(LAYOUTS[layout](state), path)
    torch.manual_seed(1)
    fresh = CAMNet("effb3")
    with caplog.at_level(logging.INFO, logger="net.weights"):
        report = load_cam_weights(fresh, path)
    assert report.missing == report.unexpected == report.mismatched == []
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    assert "ignored 10 keys" in caplog.text and "backbone._conv_head.weight" in caplog.text


def test_released_missing_key_and_shape_mismatch_still_fail(tmp_path, released):
    _, state = released
    missing = dict(state)
    missing.pop("fuse.bias")
    torch.save(LAYOUTS["released"](missing), tmp_path / "missing.ckpt")
    with pytest.raises(UserError, match=r"missing\.ckpt does not fit.*1 missing.*fuse\.bias"):
        load_cam_weights(CAMNet("effb3"), tmp_path / "missing.ckpt")
    wrong = dict(state) | {"fc.weight": torch.zeros(20, 384)}
    torch.save(LAYOUTS["released"](wrong), tmp_path / "wrong.ckpt")
    with pytest.raises(UserError, match=r"wrong\.ckpt does not fit.*shape mismatch.*fc\.weight"):
        load_cam_weights(CAMNet("effb3"), tmp_path / "wrong.ckpt")
    # an unknown extra key outside the released unused parts is still refused
    torch.save(LAYOUTS["plain"](dict(state) | {"decoder.w": torch.zeros(1)}), tmp_path / "x.pth")
    with pytest.raises(UserError, match=r"1 unexpected keys \(decoder\.w\)"):
        load_cam_weights(CAMNet("effb3"), tmp_path / "x.pth")


def _effb3_args(tiny_config) -> list[str]:
    return ["--config", str(tiny_config), "--backbone", "effb3", "--imagenet_required", "False",
            "--backbone_strides", "[]", "--backbone_width", "1.0"]


def test_released_checkpoint_through_entry_points(tiny_config, tmp_path, released, capfd):
    _, state = released
    path = tmp_path / "EffiB3_PLMixtrain.ckpt"
    torch.save(LAYOUTS["released"](state), path)
    n = infer_cam.main([*_effb3_args(tiny_config), "--weights", str(path),
                        "--out_npy", str(tmp_path / "npy"), "--infer_scales", "1.0"])
    assert n == 4 and len(list((tmp_path / "npy").glob("*.npy"))) == 4
    assert "ignored 10 keys" in capfd.readouterr().err
    train_mcl.main([*_effb3_args(tiny_config), "--weights", str(path), "--max_epoches", "1",
                    "--plmix", "False", "--session_name", str(tmp_path / "run")])
    assert (tmp_path / "run" / "last.ckpt").exists()
    assert "ignored 10 keys" in (tmp_path / "run" / "train.log").read_text()
