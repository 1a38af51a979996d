"""Stage-3 networks (net/seg_net.py, net/bifpn.py): MuSCLe's B7 'dec' network, DeepLabV3 and
the toy arch. Shapes, parameter counts, key layouts, checkpoint and ImageNet-file loading.

B7 is built once per module. Shape-only checks at full image sizes run on the meta device:
the same modules and operators with shape-only kernels (a real B7 forward at 448 px costs
tens of seconds on one CPU thread); every value check runs on the CPU at small sizes.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_pytorch import EfficientNet, get_model_params
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from net.bifpn import BiFPN, BiFPNLayer
from net.seg_net import SegNet, checkpoint_num_classes, guess_arch, load_seg_checkpoint
from tool.common.errors import UserError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MID = ("convp67", "convp56", "convp45", "convp34")
OUT = ("out4", "out5", "out6", "out7")


def _image(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _meta(**kwargs) -> SegNet:
    with torch.device("meta"):
        return SegNet(**kwargs).eval()


@pytest.fixture(scope="module")
def b7() -> SegNet:
    torch.manual_seed(0)
    return SegNet("muscle_b7").eval()


@pytest.fixture(scope="module")
def b7_meta() -> SegNet:
    return _meta(arch="muscle_b7")


# ------------------------------------------------------------------------------- muscle_b7

def test_b7_parameter_count(b7):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(b7) == 66_602_490
    head = b7.backbone._conv_head, b7.backbone._bn1, b7.backbone._fc
    assert [count(m) for m in head] == [1_638_400, 5_120, 53_781]
    assert count(b7.backbone) - sum(count(m) for m in head) == 62_143_440
    assert count(b7.BIFPN) == 2_756_352 and count(b7.fuse_dec) == 5_397
    assert len(b7.backbone._blocks) == 55


def test_b7_state_dict_layout(b7):
    keys = list(b7.state_dict())
    # backbone.*: exactly the efficientnet-pytorch B7 layout, head and classifier included
    with torch.device("meta"):
        package = EfficientNet(*get_model_params("efficientnet-b7", {"num_classes": 21}))
    assert {k for k in keys if k.startswith("backbone.")} == {
        f"backbone.{k}" for k in package.state_dict()}
    expected = set()
    for level in range(3, 8):
        expected |= {f"BIFPN.inp{level}.0.{p}" for p in ("weight", "bias")}
        expected |= {f"BIFPN.inp{level}.1.{p}" for p in BN}
    for i in range(3):
        for node in MID:
            expected |= {f"BIFPN.BIFPN_Layers.{i}.{node}.0.{p}" for p in ("weight", "bias")}
        for node in OUT:
            expected |= {f"BIFPN.BIFPN_Layers.{i}.{node}.0.{p}" for p in ("weight", "bias")}
            expected |= {f"BIFPN.BIFPN_Layers.{i}.{node}.1.{p}" for p in BN}
    expected |= {"fuse_dec.weight", "fuse_dec.bias"}
    assert {k for k in keys if not k.startswith("backbone.")} == expected
    assert len(keys) == len(set(keys)) == 1345 and len(expected) == 145

    sd = b7.state_dict()
    assert sd["backbone._fc.weight"].shape == (21, 2560) and sd["backbone._fc.bias"].shape == (21,)
    assert sd["backbone._conv_head.weight"].shape == (2560, 640, 1, 1)
    assert "backbone._bn1.running_var" in sd and "backbone._bn1.num_batches_tracked" in sd
    assert "backbone._blocks.3._expand_conv.weight" not in sd  # stage 0: expand ratio 1
    assert sd["backbone._blocks.4._expand_conv.weight"].shape == (192, 32, 1, 1)
    assert sd["BIFPN.inp7.0.weight"].shape == (256, 640, 1, 1)
    assert sd["BIFPN.BIFPN_Layers.2.convp34.0.weight"].shape == (256, 512, 1, 1)
    assert sd["fuse_dec.weight"].shape == (21, 256, 1, 1)


def test_b7_taps_and_output_sizes(b7_meta):
    """Taps 56/28/28/14/14 at 448; at 375x500 the one-pixel-smaller static-padding sizes and
    logits/dense features at 375x500 (meta device: shapes only)."""
    trunk = b7_meta.backbone
    assert trunk.tap_blocks == (17, 27, 37, 50, 54)
    assert trunk.tap_channels == (80, 160, 224, 384, 640)
    taps = trunk(torch.empty(1, 3, 448, 448, device="meta"))
    assert [tuple(t.shape[1:]) for t in taps] == [
        (80, 56, 56), (160, 28, 28), (224, 28, 28), (384, 14, 14), (640, 14, 14)]

    seen = []
    hook = trunk.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        out = b7_meta.forward_train(torch.empty(2, 3, 375, 500, device="meta"))
    finally:
        hook.remove()
    assert [tuple(t.shape[-2:]) for t in seen[0]] == [
        (46, 62), (23, 31), (23, 31), (11, 15), (11, 15)]
    assert out["out"].shape == (2, 21, 375, 500)
    assert out["dense_ft"].shape == (2, 256, 375, 500)
    assert b7_meta(torch.empty(1, 3, 375, 500, device="meta")).shape == (1, 21, 375, 500)


def test_b7_padding_bn_and_identical_layers(b7):
    blocks = b7.backbone._blocks
    assert b7.backbone._conv_stem.static_padding.padding == (0, 1, 0, 1)  # k3 s2 at 600
    assert blocks[11]._depthwise_conv.static_padding.padding == (1, 2, 1, 2)  # k5 s2
    assert blocks[12]._depthwise_conv.static_padding.padding == (2, 2, 2, 2)  # k5 s1
    bn = blocks[20]._bn1
    assert (bn.momentum, bn.eps) == pytest.approx((0.01, 1e-3))
    bn = b7.BIFPN.BIFPN_Layers[0].out4[1]
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)

    layers = [layer.state_dict() for layer in b7.BIFPN.BIFPN_Layers]
    assert len(layers) == 3
    for other in layers[1:]:
        assert all(torch.equal(layers[0][k], other[k]) for k in layers[0])


def test_b7_unused_parameters(b7):
    """Exactly MuSCLe's 33 created-but-unused tensors get no gradient (METHOD.md 14.2.5)."""
    b7.zero_grad(set_to_none=True)
    b7.forward_train(_image(1, 32, 32))["out"].sum().backward()
    no_grad = {n for n, p in b7.named_parameters() if p.grad is None}
    b7.zero_grad(set_to_none=True)
    expected = {"backbone._conv_head.weight", "backbone._bn1.weight", "backbone._bn1.bias",
                "backbone._fc.weight", "backbone._fc.bias"}
    for i, nodes in ((1, ("out6", "out7")), (2, ("convp67", "convp56") + OUT)):
        for node in nodes:
            expected |= {f"BIFPN.BIFPN_Layers.{i}.{node}.{j}.{p}" for j in (0, 1)
                         for p in ("weight", "bias") if node.startswith("out") or j == 0}
    assert len(expected) == 33
    assert no_grad == expected


def test_b7_muscle_checkpoint_loads_strictly(b7, tmp_path):
    path = tmp_path / "_7.pth"
    torch.save(b7.state_dict(), path)  # MuSCLe's layout: a plain state dict
    second = _meta(arch="muscle_b7")
    second.to_empty(device="cpu")
    report = load_seg_checkpoint(second, path)
    assert report.loaded == 1345 and not (report.missing or report.unexpected)
    x = _image(1, 64, 48)
    with torch.no_grad():
        assert torch.equal(second.eval()(x), b7(x))


def test_b7_advprop_backbone_file(b7, tmp_path):
    state = dict(b7.backbone.state_dict())
    state["_fc.weight"] = torch.randn(1000, 2560)  # the ImageNet classifier: other shape
    state["_fc.bias"] = torch.randn(1000)
    path = tmp_path / "adv-efficientnet-b7-4652b6dd.pth"
    torch.save(state, path)
    torch.manual_seed(5)
    net = SegNet("muscle_b7", backbone_weights=path)
    report = net.backbone_report
    assert report.unexpected == ["_fc.weight", "_fc.bias"] and not report.missing
    own = net.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("_fc."))
    assert own["_fc.weight"].shape == (21, 2560)
    assert not torch.equal(own["_fc.weight"], b7.backbone._fc.weight)  # kept its own init
    del net

    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if k != "_blocks.30._bn1.running_var"}, broken)
    with pytest.raises(UserError, match=r"broken\.pth lacks 1 keys.*_blocks\.30\._bn1"):
        _meta(arch="muscle_b7", backbone_weights=broken)
    with pytest.raises(UserError, match="adv-efficientnet-b7-4652b6dd.pth"):
        _meta(arch="muscle_b7", backbone_weights=tmp_path / "absent.pth")


def test_wrong_arch_checkpoint_is_one_line(b7, tmp_path):
    path = tmp_path / "toy.pth"
    torch.save({"model": SegNet("toy").state_dict(), "epoch": 3}, path)
    with pytest.raises(UserError) as err:
        load_seg_checkpoint(b7, path)
    msg = str(err.value)
    assert "\n" not in msg and "toy.pth" in msg and "'muscle_b7'" in msg
    assert "looks like a 'toy' checkpoint" in msg


# ------------------------------------------------------------------------------ BiFPN

def _ref_layer(layer: BiFPNLayer, levels):
    """MuSCLe's node equations (METHOD.md 14.2.3) written out with explicit arithmetic."""
    def conv(seq, x):
        w, b = seq[0].weight[:, :, 0, 0], seq[0].bias
        return torch.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]

    def node(seq, x):  # conv (+ BN in eval mode) + swish
        y = conv(seq, x)
        if len(seq) == 3:
            bn = seq[1]
            y = ((y - bn.running_mean[None, :, None, None])
                 / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
                 * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
        return y * torch.sigmoid(y)

    def up(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)

    def pool(x):  # 3x3 mean over a zero-padded window: padding counted
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)

    p3, p4, p5, p6, p7 = levels
    m6 = node(layer.convp67, torch.cat([p6, p7], 1))
    m5 = node(layer.convp56, torch.cat([p5, up(m6, p5)], 1))
    m4 = node(layer.convp45, torch.cat([p4, p5], 1))
    q3 = node(layer.convp34, torch.cat([p3, up(m4, p3)], 1))
    q4 = node(layer.out4, p4 + m4 + up(pool(q3), p4))
    q5 = node(layer.out5, p5 + m5 + q4)
    q6 = node(layer.out6, p6 + m6 + up(pool(q5), p6))
    q7 = node(layer.out7, p7 + q6)
    return q3, q4, q5, q6, q7


def test_bifpn_layer_equations():
    torch.manual_seed(2)
    layer = BiFPNLayer(8).eval()
    for m in layer.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    # odd sizes: Pool(Q5) is 3x4 and is resized to P6's 2x3, as at 375x500 in B7
    sizes = ((10, 14), (5, 7), (5, 7), (2, 3), (2, 3))
    levels = tuple(torch.randn(2, 8, h, w) for h, w in sizes)
    with torch.no_grad():
        got, want = layer(levels), _ref_layer(layer, levels)
    for g, w, size in zip(got, want, sizes):
        assert g.shape[-2:] == size
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_bifpn_init_copies_and_independent():
    torch.manual_seed(3)
    copies = BiFPN((4, 4, 4, 4, 4), 8, layers=2)
    fresh = BiFPN((4, 4, 4, 4, 4), 8, layers=2, independent_init=True)
    w = lambda b, i: b.BIFPN_Layers[i].convp34[0].weight  # noqa: E731
    assert torch.equal(w(copies, 0), w(copies, 1))
    assert w(copies, 0) is not w(copies, 1)  # copies, not one shared module
    assert not torch.equal(w(fresh, 0), w(fresh, 1))


# -------------------------------------------------------------------------------- toy

def test_toy_forward_train():
    torch.manual_seed(4)
    toy = SegNet("toy", toy_width=0.25).train()
    assert toy.backbone.tap_channels == (32, 64, 64, 128, 128)
    assert sum(p.numel() for p in toy.parameters()) < 1_000_000
    out = toy.forward_train(_image(2, 128, 128))
    assert set(out) == {"out", "dense_ft"}
    assert out["out"].shape == (2, 21, 128, 128) and out["dense_ft"].shape == (2, 32, 128, 128)
    out["out"].mean().backward()
    toy.eval()
    with torch.no_grad():
        x = _image(1, 75, 101)
        dense = toy.forward_train(x)["dense_ft"]
        logits = toy(x)
        assert logits.shape == (1, 21, 75, 101)
        # the 1x1 classifier commutes with the align_corners upsampling (METHOD.md 14.2.4)
        q3 = toy.BIFPN(toy.backbone(x))[0]
        low = F.interpolate(toy.fuse_dec(q3), size=(75, 101), mode="bilinear",
                            align_corners=True)
        torch.testing.assert_close(logits, low, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits, toy.fuse_dec(dense))
    assert guess_arch(toy.state_dict()) == "toy"


def test_toy_checkpoint_formats(tmp_path):
    torch.manual_seed(6)
    toy, other = SegNet("toy").eval(), SegNet("toy").eval()
    x = _image(1, 40, 56)
    for name, obj in (("engine.ckpt", {"model": toy.state_dict(), "epoch": 2}),
                      ("muscle.pth", toy.state_dict()),
                      ("wrapped.pth", {"state_dict": toy.state_dict()})):
        torch.save(obj, tmp_path / name)
        load_seg_checkpoint(other, tmp_path / name)
        with torch.no_grad():
            assert torch.equal(other(x), toy(x))
    narrow = SegNet("toy", bifpn_channels=16)
    with pytest.raises(UserError, match=r"engine\.ckpt .*'toy'.*same arch.*shape mismatch"):
        load_seg_checkpoint(narrow, tmp_path / "engine.ckpt")
    with pytest.raises(UserError, match="toy has no ImageNet weights"):
        SegNet("toy", backbone_weights=tmp_path / "muscle.pth")
    with pytest.raises(UserError, match="unknown segmentation arch"):
        SegNet("deeplabv3_resnet50")


# --------------------------------------------------------------------------- DeepLabV3

@pytest.fixture(scope="module")
def deeplab(tmp_path_factory):
    torch.manual_seed(7)
    state = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet101-63fe2227.pth"
    torch.save(state, path)
    torch.manual_seed(8)
    net = SegNet("deeplabv3_resnet101", backbone_weights=path, aux_loss=True)
    return net, state, path


def test_deeplab_resnet101_file(deeplab, tmp_path):
    net, state, path = deeplab
    report = net.backbone_report
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing
    own = net.backbone.state_dict()
    assert set(own) == set(state) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(v, state[k]) for k, v in own.items())
    assert sum(p.numel() for p in net.parameters()) == 60_996_202  # torchvision meta, aux

    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if k != "layer3.22.bn3.weight"}, broken)
    with pytest.raises(UserError, match=r"broken\.pth lacks 1 keys.*layer3\.22\.bn3\.weight"):
        _meta(arch="deeplabv3_resnet101", backbone_weights=broken)
    with pytest.raises(UserError, match="resnet101-63fe2227.pth"):
        _meta(arch="deeplabv3_resnet101", backbone_weights=tmp_path / "absent.pth")


def test_deeplab_outputs(deeplab):
    net = deeplab[0].train()
    with torch.no_grad():
        out = net.forward_train(_image(2, 41, 57))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 21, 41, 57)
    with pytest.raises(UserError, match=re.escape("needs a batch of >= 2")):
        net.forward_train(_image(1, 41, 57))
    with pytest.raises(UserError, match=re.escape("needs a batch of >= 2")):
        net(_image(1, 41, 57))
    net.eval()
    with torch.no_grad():
        assert net(_image(1, 33, 45)).shape == (1, 21, 33, 45)
    assert guess_arch(net.state_dict()) == "deeplabv3_resnet101"


def test_deeplab_strides():
    os8 = _meta(arch="deeplabv3_resnet101")
    assert os8.aux_classifier is None
    assert set(os8.forward_train(torch.empty(2, 3, 64, 64, device="meta"))) == {"out"}
    os16 = _meta(arch="deeplabv3_resnet101", output_stride=16, aux_loss=True)
    for net, l3, l4, rate in ((os8, 2, 4, 12), (os16, 1, 2, 6)):
        assert net.backbone.layer3[1].conv2.dilation == (l3, l3)
        assert net.backbone.layer4[1].conv2.dilation == (l4, l4)
        assert net.classifier[0].convs[1][0].dilation == (rate, rate)
    feats = os16.backbone(torch.empty(1, 3, 64, 64, device="meta"))
    assert feats["out"].shape[-2:] == (4, 4) and feats["aux"].shape[-2:] == (4, 4)
    assert os16.forward_train(torch.empty(2, 3, 65, 47, device="meta"))["aux"].shape == (
        2, 21, 65, 47)
    with pytest.raises(UserError, match="output_stride must be 8 or 16"):
        _meta(arch="deeplabv3_resnet101", output_stride=32)


def test_checkpoint_num_classes_of_each_layout(b7, deeplab):
    """The class count read from a state dict (its last classifier conv) for each arch, at
    VOC's 21 and COCO's 81; None for a state of no known head."""
    assert checkpoint_num_classes(b7.state_dict()) == 21
    assert checkpoint_num_classes(deeplab[0].state_dict()) == 21
    head = DeepLabHead(2048, 81)  # the COCO classifier alone, as SegNet names it
    assert checkpoint_num_classes({f"classifier.{k}": v for k, v in head.state_dict().items()
                                   }) == 81
    assert checkpoint_num_classes(SegNet("toy", num_classes=81).state_dict()) == 81
    assert checkpoint_num_classes({"conv.weight": torch.zeros(3, 3)}) is None
