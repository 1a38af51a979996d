"""ResNet-38 and EfficientNet-B3 backbones: shapes, taps, strides, checkpoint layouts."""
from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from net.backbones import BACKBONES, Backbone, build_backbone
from net.backbones.resnet38 import mxnet_to_torch_name
from net.cam_net import CAMNet
from net.norm import FixedBatchNorm2d
from net.weights import compare_keys, fill_bn_counters
from tests.utils import assert_missing_key_fails
from tool.common.errors import UserError

BN_STATS = ("weight", "bias", "running_mean", "running_var")


def _image(size: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _check_cam_modes(net: CAMNet, x: torch.Tensor, c7: int) -> None:
    n, _, h, w = x.shape
    with torch.no_grad():
        cam, sgc, emb, logits = net(x, "cam")
        assert cam.shape == sgc.shape == (n, 21, h, w)
        assert emb.shape == (n, c7) and logits.shape == (n, 21)
        assert all(t.shape == (n, 21, h, w) for t in net(x, "pix"))
        emb, logits = net(x, "logits")
        assert emb.shape == (n, c7) and logits.shape == (n, 21)


def test_registry():
    assert {"resnet18", "resnet50", "resnet38", "effb3"} <= set(BACKBONES)
    with pytest.raises(UserError, match="does not take"):
        build_backbone("effb3", strides=(2, 2, 1))


# ---------------------------------------------------------------------------------- ResNet-38

def resnet38d_layout() -> dict[str, tuple[int, ...]]:
    """PSA/SEAM resnet38d parameter names and shapes, written out from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1a.weight": (64, 3, 3, 3)}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{s}": (c,) for s in BN_STATS})

    for s, n, cin, mid, out in ((2, 3, 64, 128, 128), (3, 3, 128, 256, 256),
                                (4, 6, 256, 512, 512), (5, 3, 512, 512, 1024)):
        for i in range(n):
            name, c = (f"b{s}", cin) if i == 0 else (f"b{s}_{i}", out)
            bn(f"{name}.bn_branch2a", c)
            shapes[f"{name}.conv_branch2a.weight"] = (mid, c, 3, 3)
            bn(f"{name}.bn_branch2b1", mid)
            shapes[f"{name}.conv_branch2b1.weight"] = (out, mid, 3, 3)
            if i == 0:
                shapes[f"{name}.conv_branch1.weight"] = (out, c, 1, 1)
    for name, cin, out in (("b6", 1024, 2048), ("b7", 2048, 4096)):
        bn(f"{name}.bn_branch2a", cin)
        shapes[f"{name}.conv_branch2a.weight"] = (out // 4, cin, 1, 1)
        bn(f"{name}.bn_branch2b1", out // 4)
        shapes[f"{name}.conv_branch2b1.weight"] = (out // 2, out // 4, 3, 3)
        bn(f"{name}.bn_branch2b2", out // 2)
        shapes[f"{name}.conv_branch2b2.weight"] = (out, out // 2, 1, 1)
        shapes[f"{name}.conv_branch1.weight"] = (out, cin, 1, 1)
    bn("bn7", 4096)
    return shapes


def _meta_checkpoint(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    # Shape-only tensors: key checks run before any value is copied, so nothing is allocated.
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.fixture(scope="module")
def r38() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("resnet38")


@torch.no_grad()
def test_resnet38_taps_are_seam_conv3_to_conv6(r38):
    b = r38.backbone.eval()
    x = b.conv1a(_image(32))
    for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2"):
        x = getattr(b, name)(x)[0]
    p1, p3, p5, p7 = b(_image(32))
    torch.testing.assert_close(p1, torch.relu(b.b4.bn_branch2a(x)))
    for name in ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5", "b5", "b5_1", "b5_2", "b6", "b7"):
        x = getattr(b, name)(x)[0]
    torch.testing.assert_close(p7, torch.relu(b.bn7(x)))


def test_resnet38_bn_fixed_by_default(r38):
    bns = [m for m in r38.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 37 and all(isinstance(m, FixedBatchNorm2d) for m in bns)


def test_resnet38_public_layout(r38):
    # The converted MXNet file has no num_batches_tracked counters; fc8 is not a backbone key.
    state = _meta_checkpoint({**resnet38d_layout(), "fc8.weight": (21, 4096, 1, 1)})
    report = compare_keys(r38.backbone, fill_bn_counters(state), "layout")
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected == ["fc8.weight"]


def test_resnet38_checkpoint_loads(r38, tmp_path):
    state = {k: v for k, v in r38.backbone.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
    torch.save({**state, "fc8.weight": torch.zeros(21, 4096, 1, 1)}, path)
    fresh = build_backbone("resnet38", trainable_bn=True)
    assert type(fresh.bn7) is nn.BatchNorm2d
    report = fresh.load_imagenet_weights(path)
    assert report.missing == [] and report.unexpected == ["fc8.weight"]
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]) if k in state else v.item() == 0, k


def test_resnet38_missing_key_fails(r38, tmp_path):
    assert_missing_key_fails(r38.backbone, _meta_checkpoint(resnet38d_layout()),
                             "b4_3.bn_branch2b1.running_var", tmp_path)


def test_resnet38_missing_file_names_checkpoint(r38, tmp_path):
    with pytest.raises(UserError, match="ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"):
        r38.backbone.load_imagenet_weights(tmp_path / "nope.pth")


@pytest.mark.skipif(importlib.util.find_spec("mxnet") is not None, reason="mxnet installed")
def test_resnet38_params_needs_mxnet(r38, tmp_path):
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"optional `mxnet` package.*converted .*\.pth"):
        r38.backbone.load_imagenet_weights(path)


_MX_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
          "running_var": "moving_var"}


def _mxnet_name(key: str) -> str:
    """resnet38d key -> the MXNet model-A1 name (the inverse of ``mxnet_to_torch_name``)."""
    module, suffix = key.rsplit(".", 1)
    kind = "aux" if suffix.startswith("running") else "arg"
    if module in ("conv1a", "bn7"):
        return f"{kind}:{module}_{_MX_BN[suffix] if module == 'bn7' else suffix}"
    block, layer = module.split(".")
    stage, _, k = block[1:].partition("_")
    layer_kind, branch = layer.split("_", 1)
    mx_suffix = suffix if layer_kind == "conv" else _MX_BN[suffix]
    return (f"{kind}:{'res' if layer_kind == 'conv' else 'bn'}{stage}{f'b{k}' if k else 'a'}_"
            f"{branch}_{mx_suffix}")


def test_resnet38_params_file_is_converted_in_memory(r38, tmp_path, monkeypatch):
    state = {k: v for k, v in r38.backbone.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    arrays = {_mxnet_name(k): SimpleNamespace(asnumpy=v.numpy) for k, v in state.items()}
    assert all(mxnet_to_torch_name(mx) == k for mx, k in zip(arrays, state))
    arrays["arg:linear1000_weight"] = SimpleNamespace(asnumpy=lambda: np.zeros((3, 4096)))
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    path.write_bytes(b"")
    fake = types.ModuleType("mxnet")
    fake.nd = SimpleNamespace(load=lambda p: arrays if p == str(path) else {})
    monkeypatch.setitem(sys.modules, "mxnet", fake)
    report = r38.backbone.load_imagenet_weights(path)
    assert report.path == str(path)  # no temporary file in between
    assert report.missing == [] and report.unexpected == ["linear1000.weight"]
    for k, v in r38.backbone.state_dict().items():
        assert torch.equal(v, state[k]) if k in state else v.item() == 0, k


@pytest.mark.parametrize("mx,pt", [
    ("arg:conv1a_weight", "conv1a.weight"),
    ("arg:res2a_branch1_weight", "b2.conv_branch1.weight"),
    ("arg:res4b5_branch2b1_weight", "b4_5.conv_branch2b1.weight"),
    ("arg:bn3b2_branch2a_gamma", "b3_2.bn_branch2a.weight"),
    ("arg:bn6a_branch2b2_beta", "b6.bn_branch2b2.bias"),
    ("aux:bn5b1_branch2b1_moving_var", "b5_1.bn_branch2b1.running_var"),
    ("aux:bn7_moving_mean", "bn7.running_mean"),
    ("arg:linear1000_weight", "linear1000.weight"),
])
def test_mxnet_names(mx, pt):
    assert mxnet_to_torch_name(mx) == pt


# --------------------------------------------------------------------------- EfficientNet-B3

@pytest.fixture(scope="module")
def eff() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("effb3")


@pytest.fixture(scope="module")
def eff_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "adv-efficientnet-b3-cdd7c0f4.pth"
    torch.save(EfficientNet.from_name("efficientnet-b3").state_dict(), path)
    return path


def test_effb3_stage6_stride1_and_released_padding(eff):
    blocks = eff.backbone._blocks
    assert len(blocks) == 26
    strides = [b._depthwise_conv.stride[0] for b in blocks]
    assert [i for i, s in enumerate(strides) if s == 2] == [2, 5, 8]  # 18 is stride 1
    assert blocks[18]._depthwise_conv.kernel_size == (5, 5)
    # METHOD.md 2.1: padding from image size 300 for every conv, whatever its stage.
    table = {(3, 1): (1, 1), (5, 1): (2, 2), (3, 2): (0, 1), (5, 2): (1, 2), (1, 1): (0, 0)}
    convs = [m for m in eff.backbone.modules() if isinstance(m, Conv2dStaticSamePadding)]
    for m in convs:
        before, after = table[(m.kernel_size[0], m.stride[0])]
        pad = m.static_padding.padding if before or after else (0, 0, 0, 0)
        assert tuple(pad) == (before, after, before, after), m


def test_effb3_bn(eff):
    bns = [m for m in eff.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(type(m) is nn.BatchNorm2d for m in bns)  # trainable by default (METHOD.md 2.6)
    assert all(m.momentum == pytest.approx(0.01) and m.eps == 1e-3 for m in bns)
    fixed = build_backbone("effb3", trainable_bn=False)
    bns = [m for m in fixed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 26 * 3 - 2 and all(type(m) is FixedBatchNorm2d for m in bns)


def test_effb3_checkpoint_loads(eff_file):
    backbone = build_backbone("effb3")
    report = backbone.load_imagenet_weights(eff_file)
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == sorted(
        ["_conv_head.weight", "_fc.weight", "_fc.bias"]
        + [f"_bn1.{s}" for s in (*BN_STATS, "num_batches_tracked")])
    sd = torch.load(eff_file)
    torch.testing.assert_close(backbone._blocks[18]._depthwise_conv.weight,
                               sd["_blocks.18._depthwise_conv.weight"])
    # Up to block 4 the network is the package's own: same taps from the same weights.
    ref = EfficientNet.from_name("efficientnet-b3").eval()
    ref.load_state_dict(sd)
    x = _image(64)
    with torch.no_grad():
        y = ref._swish(ref._bn0(ref._conv_stem(x)))
        y = ref._blocks[1](ref._blocks[0](y))
        torch.testing.assert_close(backbone.eval()(x)[0], y)


def test_effb3_missing_key_fails(eff_file, tmp_path):
    assert_missing_key_fails(build_backbone("effb3"), torch.load(eff_file),
                             "_blocks.18._depthwise_conv.weight", tmp_path)


def test_effb3_missing_file_names_checkpoints(tmp_path):
    with pytest.raises(UserError, match=r"adv-efficientnet-b3-cdd7c0f4\.pth.*"
                                        r"efficientnet-b3-5fb5a3c3\.pth"):
        CAMNet("effb3", backbone_weights=tmp_path / "nope.pth")


def test_effb3_drop_connect_train_only(monkeypatch):
    import efficientnet_pytorch.model as package

    calls = []

    def spy(x, p, training):
        calls.append((round(p, 6), training))
        return package_drop(x, p, training)

    package_drop = package.drop_connect
    monkeypatch.setattr(package, "drop_connect", spy)
    torch.manual_seed(0)
    b = build_backbone("effb3", trainable_bn=False)  # fixed BN: only drop connect is random
    x = _image(32, n=2)
    with torch.no_grad():
        b.eval()
        assert all(torch.equal(u, v) for u, v in zip(b(x), b(x)))
        identity_skip = [1, 3, 4, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 23, 25]
        assert calls == [(round(0.2 * i / 26, 6), False) for i in identity_skip] * 2
        calls.clear()
        b.train()
        torch.manual_seed(3)
        p7_train = b(x)[-1]
        assert all(training for _, training in calls) and len(calls) == 19
    b.eval()
    with torch.no_grad():
        assert not torch.equal(p7_train, b(x)[-1])


# --------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("which,size,n,taps,stride,fuse_in,post_relu", [
    ("r38", 32, 1, [(256, 8, 8), (512, 4, 4), (1024, 4, 4), (4096, 4, 4)], 8, 1792, True),
    ("eff", 64, 2, [(24, 32, 32), (48, 8, 8), (136, 4, 4), (384, 4, 4)], 16, 208, False),
])
def test_backbone_shapes(request, which, size, n, taps, stride, fuse_in, post_relu):
    """The Backbone protocol: tap channels and shapes, output stride, CAMNet head sizes."""
    net = request.getfixturevalue(which)
    assert isinstance(net.backbone, Backbone)
    assert net.backbone.tap_channels == tuple(c for c, _, _ in taps)
    assert net.backbone.output_stride == stride
    assert net.fuse.in_channels == fuse_in and net.fc.in_features == taps[-1][0]
    with torch.no_grad():
        out = net.backbone.eval()(_image(size, n))
    assert [tuple(t.shape[1:]) for t in out] == taps
    assert not post_relu or all((t >= 0).all() for t in out)  # ResNet-38's taps are post-ReLU
    _check_cam_modes(net, _image(size, n), taps[-1][0])
