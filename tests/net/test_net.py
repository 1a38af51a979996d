"""CAMNet and ResNet backbones: shapes, CAM/PCM numerics, detach rules, BN, weight loading."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision

from net.backbones import BACKBONES, build_backbone
from net.cam_net import CAMNet, pcm
from net.norm import FixedBatchNorm2d
from net.weights import load_cam_weights
from tests.utils import assert_missing_key_fails
from tool.common.errors import UserError

TOY = {"backbone": "resnet18", "width": 0.5, "strides": (2, 2, 1)}


def _toy(**kw) -> CAMNet:
    torch.manual_seed(0)
    return CAMNet(**{**TOY, **kw})


def _image(h: int = 64, w: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def _grads_none(module: torch.nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


@pytest.fixture(scope="module")
def toy_net() -> CAMNet:
    return _toy()


@pytest.mark.parametrize("h,w", [(64, 64), (64, 96)])
@torch.no_grad()
def test_shapes_resnet18(toy_net, h, w):
    x = _image(h, w)
    cam, sgc, emb, logits = toy_net(x, "cam")
    assert cam.shape == sgc.shape == (2, 21, h, w)
    assert emb.shape == (2, 256) and logits.shape == (2, 21)
    cam, sgc = toy_net(x, "pix")
    assert cam.shape == sgc.shape == (2, 21, h, w)
    emb, logits = toy_net(x, "logits")
    assert emb.shape == (2, 256) and logits.shape == (2, 21)


@pytest.fixture(scope="module")
def resnet50_net() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("resnet50")


def test_shapes_resnet50(resnet50_net):
    net = resnet50_net
    assert net.backbone.tap_channels == (64, 512, 1024, 2048)
    assert net.fuse.in_channels == 1600 and net.fc.in_features == 2048
    assert net.backbone.output_stride == 16
    with torch.no_grad():
        cam, sgc, emb, logits = net(_image(n=1), "cam")
    assert cam.shape == sgc.shape == (1, 21, 64, 64)
    assert emb.shape == (1, 2048) and logits.shape == (1, 21)


def test_tap_channels_and_strides():
    net = build_backbone("resnet18", width=0.5, strides=(2, 1, 1))
    taps = net(_image())
    assert net.tap_channels == (32, 64, 128, 256) and net.output_stride == 8
    assert [t.shape[1] for t in taps] == list(net.tap_channels)
    assert [t.shape[-1] for t in taps] == [16, 8, 8, 8]


def test_unknown_mode_and_backbone(toy_net):
    with pytest.raises(ValueError):
        toy_net(_image(), "seg")
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(UserError, match="does not take"):
        build_backbone("resnet18", dilations=(1, 2))
    with pytest.raises(UserError, match="strides"):
        build_backbone("resnet18", strides=(2, 3, 1))
    assert {"resnet18", "resnet50"} <= set(BACKBONES)


@pytest.mark.parametrize("strides,size", [((2, 2, 1), 4), ((2, 1, 1), 8)])
def test_output_stride(strides, size):
    net = _toy(strides=strides)
    _, _, _, p7 = net.backbone(_image())
    assert net.cam(p7).shape[-2:] == (size, size)  # 64 / 16 vs 64 / 8


def test_cam_is_relu_of_fc_einsum(toy_net):
    p7 = torch.randn(2, 256, 3, 5)
    expected = torch.einsum("nkhw,ck->nchw", p7, toy_net.fc.weight).clamp(min=0)
    torch.testing.assert_close(toy_net.cam(p7), expected)


def _pcm_loops(cam: np.ndarray, feat: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    n, c, h, w = cam.shape
    cam, feat = cam.reshape(n, c, -1), feat.reshape(n, feat.shape[1], -1)
    out = np.zeros_like(cam)
    for b in range(n):
        f = [feat[b, :, i] / (np.sqrt((feat[b, :, i] ** 2).sum()) + eps) for i in range(h * w)]
        a = np.array([[max(float(fi @ fj), 0.0) for fj in f] for fi in f])  # a[i, j]
        for j in range(h * w):
            col = a[:, j] / (a[:, j].sum() + eps)
            out[b, :, j] = sum(cam[b, :, i] * col[i] for i in range(h * w))
    return out.reshape(n, c, h, w)


def test_pcm_matches_loops():
    g = torch.Generator().manual_seed(2)
    cam = torch.rand(2, 4, 3, 4, generator=g, dtype=torch.float64)
    feat = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(pcm(cam, feat).numpy(), _pcm_loops(cam.numpy(), feat.numpy()),
                               rtol=1e-10, atol=1e-12)


def test_sgc_is_pcm_of_fused_features(toy_net):
    x = _image()
    with torch.no_grad():
        p1, p3, p5, p7 = toy_net.backbone(x)
        cam = toy_net.cam(p7)
        fused = toy_net.fusion_features((p1, p3, p5), cam.shape[-2:])
        assert fused.shape == (2, 32 + 64 + 128, 4, 4)
        sgc = torch.nn.functional.interpolate(pcm(cam, toy_net.fuse(fused)), size=(64, 64),
                                              mode="bilinear", align_corners=True)
        torch.testing.assert_close(toy_net(x, "cam")[1], sgc)


def test_detach_rules_cam_mode():
    net = _toy()
    cam, sgc, emb, logits = net(_image(), "cam")
    sgc.sum().backward(retain_graph=True)
    assert net.fuse.weight.grad is not None and net.fuse.weight.grad.abs().sum() > 0
    assert _grads_none(net.backbone) and net.fc.weight.grad is None
    cam.sum().backward(retain_graph=True)
    assert net.fc.weight.grad is None
    assert net.backbone.layer4[0].conv1.weight.grad is not None
    logits.sum().backward()
    assert net.fc.weight.grad is not None


def test_detach_rules_pix_mode():
    net = _toy()
    cam, sgc = net(_image(), "pix")
    sgc.sum().backward()
    assert net.backbone.layer4[-1].conv2.weight.grad is not None
    assert net.fuse.weight.grad is not None and net.fc.weight.grad is None


def test_fixed_bn_keeps_running_stats():
    net = _toy().train()
    assert isinstance(net.backbone.bn1, FixedBatchNorm2d)
    before = {k: v.clone() for k, v in net.named_buffers()}  # running stats, batch counts
    net(_image(), "cam")
    assert all(torch.equal(v, before[k]) for k, v in net.named_buffers())
    assert net.backbone.bn1.weight.requires_grad


def test_trainable_bn_updates_running_stats():
    net = _toy(trainable_bn=True).train()
    assert type(net.backbone.bn1) is torch.nn.BatchNorm2d
    before = net.backbone.bn1.running_mean.clone()
    net(_image(), "cam")
    assert not torch.equal(before, net.backbone.bn1.running_mean)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_resnet50_imagenet_layout_loads(tmp_path, caplog, resnet50_net):
    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    assert "fc.weight" in sd and "fc.bias" in sd
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="net.weights"):
        report = resnet50_net.backbone.load_imagenet_weights(path)
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert "2 unexpected (fc.weight, fc.bias)" in caplog.text
    torch.testing.assert_close(resnet50_net.backbone.layer3[2].conv2.weight,
                               sd["layer3.2.conv2.weight"])


def test_legacy_resnet50_without_bn_counters_loads(tmp_path, resnet50_net):
    # resnet50-19c8e357.pth predates BN's num_batches_tracked
    sd = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
          if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "resnet50-19c8e357.pth")
    report = resnet50_net.backbone.load_imagenet_weights(tmp_path / "resnet50-19c8e357.pth")
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]


def test_weights_wrapped_and_module_prefix(tmp_path, resnet18_file):
    sd = torch.load(resnet18_file)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    torch.manual_seed(0)
    net = CAMNet("resnet18", backbone_weights=str(path))
    torch.testing.assert_close(net.backbone.conv1.weight, sd["conv1.weight"])


def test_missing_key_fails(tmp_path, resnet18_file):
    assert_missing_key_fails(build_backbone("resnet18"), torch.load(resnet18_file),
                             "layer2.0.bn1.running_var", tmp_path)


def test_width_mismatch_fails(resnet18_file):
    with pytest.raises(UserError, match=r"shape mismatch conv1\.weight"):
        build_backbone("resnet18", width=0.5).load_imagenet_weights(resnet18_file)


def test_missing_file_names_expected_checkpoint(tmp_path, resnet50_net):
    with pytest.raises(UserError, match="resnet50-0676ba61.pth"):
        resnet50_net.backbone.load_imagenet_weights(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="resnet18-f37072fd.pth"):
        _toy(backbone_weights=tmp_path / "nope.pth")


@pytest.mark.parametrize("value", [None, "None", ""])
def test_no_weights_is_random_init(value, caplog):
    with caplog.at_level(logging.INFO, logger="net.weights"):
        net = _toy(backbone_weights=value)
    assert isinstance(net, CAMNet)
    assert "randomly initialised" in caplog.text


@pytest.mark.parametrize("key", ["model", "model_state_dict"])
def test_load_cam_weights_round_trip(tmp_path, toy_net, key):
    path = tmp_path / "cam.ckpt"
    torch.save({key: toy_net.state_dict(), "optimizer": {}, "epoch": 3}, path)
    fresh = CAMNet(**TOY)
    report = load_cam_weights(fresh, path)
    assert report.missing == report.unexpected == []
    for k, v in toy_net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_load_cam_weights_strict(tmp_path, toy_net):
    sd = toy_net.state_dict()
    sd.pop("fuse.bias")
    path = tmp_path / "plain.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"plain\.pth.*missing.*fuse\.bias"):
        load_cam_weights(CAMNet(**TOY), path)
    report = load_cam_weights(CAMNet(**TOY), path, strict=False)
    assert report.missing == ["fuse.bias"]
    with pytest.raises(UserError, match="shape mismatch"):
        load_cam_weights(CAMNet("resnet18", width=0.25), path, strict=False)
