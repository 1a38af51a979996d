"""The stage-3 segmentation networks (METHOD.md 14.2, 14.7.1) and their checkpoint loader.

``SegNet(arch)`` builds one of:

- ``'muscle_b7'``: MuSCLe's network in 'dec' mode (METHOD.md 14.2). EfficientNet-B7 at output
  stride 32, the concat/sum "BiFPN" over its taps p3..p7 (:mod:`net.bifpn`), and a decoder
  that upsamples the last layer's Q3 to the input size (``dense_ft``, used by BEACON) before a
  1x1 classifier ``fuse_dec``. The state dict is MuSCLe's key for key, including the modules
  it builds but never runs (METHOD.md 14.2.5, 14.2.7), so its ``_<ep>.pth`` files load strictly.
- ``'deeplabv3_resnet101'``: torchvision's DeepLabV3-ResNet-101, the field-standard comparator
  (METHOD.md 14.7.1), at output stride 8 (the builder as is) or 16.
- ``'toy'``: the ``muscle_b7`` design on a ResNet-18 trunk at width 0.25 with 32 BiFPN channels
  by default (0.75 M parameters), for CPU demos and tests; it has no ImageNet weights.

Inputs are ImageNet-normalised (N, 3, H, W); outputs are logits at input resolution, never
softmaxed. Nothing is downloaded: ImageNet weights come from a local file.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from efficientnet_pytorch import get_model_params
from torch import nn
from torchvision.models import resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation import deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from data.description import DESCRIPTIONS
from data.voc import NUM_CLASSES
from net.backbones.effb3 import EfficientNetTrunk
from net.backbones.resnet import ResNetBackbone
from net.bifpn import BiFPN, upsample_to
from net.weights import (
    LoadReport,
    compare_keys,
    load_backbone_weights,
    no_weights,
    read_state_dict,
)
from tool.common.errors import UserError

logger = logging.getLogger(__name__)

ARCHS = ("muscle_b7", "deeplabv3_resnet101", "toy")
BIFPN_ARCHS = ("muscle_b7", "toy")
BIFPN_CHANNELS = {"muscle_b7": 256, "toy": 32}  # bifpn_channels=None picks these

# EfficientNet-B7 (METHOD.md 14.2.1): static "same" padding computed once for size 600.
B7_MODEL = "efficientnet-b7"
B7_IMAGE_SIZE = 600
STRIDE2_STAGE = 5  # 0-based package stage (blocks 38-50) that last_pooling=False makes stride 1
B7_TAP_BLOCKS = (17, 27, 37, 50, 54)  # p3..p7: the last blocks of package stages 2..6
B7_HINT = ("the efficientnet-pytorch package's published EfficientNet-B7 AdvProp release "
           "weights adv-efficientnet-b7-4652b6dd.pth (not efficientnet-b7-dcc49843.pth)")

TOY_WIDTH = 0.5  # the toy trunk: ResNet-18 at half width, as the stage-1 toy network (its init)

# DeepLabV3 (METHOD.md 14.7.1): output stride -> dilated ResNet stages and ASPP rates.
DEEPLAB_DILATION = {8: [False, True, True], 16: [False, False, True]}
DEEPLAB_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
RESNET101_HINT = ("torchvision's ImageNet ResNet-101 checkpoint resnet101-63fe2227.pth "
                  "(IMAGENET1K_V1) or resnet101-cd907fc2.pth (IMAGENET1K_V2), published with "
                  "torchvision's model zoo")
_SHOW = 5  # keys named in one-line messages


def efficientnet_b7_trunk(num_classes: int = NUM_CLASSES, last_pooling: bool = True,
                          ) -> EfficientNetTrunk:
    """EfficientNet-B7 trunk of METHOD.md 14.2.1: ``forward(x)`` -> (p3, .., p7).

    Taps are blocks 17, 27, 37, 50, 54: (80, 160, 224, 384, 640) channels at strides
    (8, 16, 16, 32, 32); 448x448 gives 56/28/28/14/14. ``last_pooling=False`` gives stage 5
    stride 1 (output stride 16). BN momentum 0.01, eps 1e-3; drop-connect 0.2 * idx / 55.
    The head (``_conv_head``, ``_bn1``, ``_fc``: Linear(2560, num_classes)) is built, never run.
    """
    blocks_args, params = get_model_params(
        B7_MODEL, {"image_size": B7_IMAGE_SIZE, "num_classes": num_classes})
    if not last_pooling:
        blocks_args[STRIDE2_STAGE] = blocks_args[STRIDE2_STAGE]._replace(stride=[1])
    return EfficientNetTrunk(blocks_args, params, B7_IMAGE_SIZE, B7_TAP_BLOCKS, keep_head=True)


class ToyTrunk(ResNetBackbone):
    """The toy arch's trunk: ResNet-18 at ``width``, trainable BN, output stride 32 (16
    without ``last_pooling``). ``forward(x)`` -> (p3, .., p7) with the strides of the B7 taps:
    layer2 (stride 8), layer3's two blocks (16, 16), layer4's two blocks (32, 32); channels
    (32, 64, 64, 128, 128)."""

    def __init__(self, last_pooling: bool = True, width: float = TOY_WIDTH) -> None:
        super().__init__("resnet18", BasicBlock, (2, 2, 2, 2),
                         (2, 2, 2) if last_pooling else (2, 2, 1), width, trainable_bn=True)
        _, c3, c5, c7 = self.tap_channels
        self.tap_channels = (c3, c5, c5, c7, c7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        p4 = self.layer3[0](p3)
        p5 = self.layer3[1:](p4)
        p6 = self.layer4[0](p5)
        p7 = self.layer4[1:](p6)
        return p3, p4, p5, p6, p7


def _without_fc(trunk: nn.Module) -> nn.Module:
    """A container sharing every child of ``trunk`` but ``_fc``: loading an ImageNet file into
    it loads the trunk, and the file's ``_fc.*`` (1000 classes) are reported as unexpected."""
    view = nn.Module()
    for name, child in trunk.named_children():
        if name != "_fc":
            view.add_module(name, child)
    return view


class SegNet(nn.Module):
    """Stage-3 segmentation network (METHOD.md 14.2, 14.7.1; module docstring for the archs).

    ``backbone_weights``: a local ImageNet file loaded at construction (None = random init):
    AdvProp B7 in the efficientnet-pytorch layout (``_fc.*`` ignored) or the torchvision
    ResNet-101 file (``fc.*`` ignored); any missing key is a UserError. The report is kept in
    ``backbone_report``. ``bifpn_layers``, ``bifpn_channels`` (None: 256 for muscle_b7, 32 for
    toy), ``last_pooling`` and ``bifpn_independent_init`` (quirk S4 off) apply to the BiFPN
    archs; ``output_stride`` (8 or 16) and ``aux_loss`` to DeepLab; ``toy_width`` (the
    ResNet-18 width multiplier, as the stage-1 toy network's) to the toy. ``num_classes``:
    the output channels C with background (21 VOC, 81 COCO; the config key of that name).
    """

    def __init__(self, arch: str = "muscle_b7", num_classes: int = NUM_CLASSES,
                 backbone_weights: str | os.PathLike | None = None, bifpn_layers: int = 3,
                 bifpn_channels: int | None = None, last_pooling: bool = True,
                 output_stride: int = 8, aux_loss: bool = False,
                 bifpn_independent_init: bool = False, toy_width: float = TOY_WIDTH) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown segmentation arch {arch!r}; choose one of "
                            f"{', '.join(ARCHS)}")
        self.arch = arch
        self.num_classes = num_classes
        self.backbone_report: LoadReport | None = None
        if arch in BIFPN_ARCHS:
            channels = BIFPN_CHANNELS[arch] if bifpn_channels is None else bifpn_channels
            self.toy_width = toy_width
            self._build_bifpn_net(num_classes, backbone_weights, bifpn_layers, channels,
                                  last_pooling, bifpn_independent_init)
        else:
            self._build_deeplab(num_classes, backbone_weights, output_stride, aux_loss)

    # ------------------------------------------------------------------------- construction

    def _build_bifpn_net(self, num_classes: int, weights: str | os.PathLike | None,
                         layers: int, channels: int, last_pooling: bool,
                         independent_init: bool) -> None:
        """backbone -> BIFPN -> fuse_dec, MuSCLe's names (METHOD.md 14.2.7)."""
        if layers < 1 or channels < 1:
            raise UserError(f"SegNet {self.arch}: bifpn_layers and bifpn_channels must be "
                            f">= 1, got {layers} and {channels}")
        if self.arch == "muscle_b7":
            self.backbone = efficientnet_b7_trunk(num_classes, last_pooling)
            self.backbone_report = load_backbone_weights(
                _without_fc(self.backbone), weights, "EfficientNet-B7", B7_HINT)
        else:
            if not no_weights(weights):
                raise UserError(f"SegNet toy has no ImageNet weights; got backbone_weights "
                                f"{weights} (give none)")
            self.backbone = ToyTrunk(last_pooling, self.toy_width)
        self.BIFPN = BiFPN(self.backbone.tap_channels, channels, layers, last_pooling,
                           independent_init)
        self.fuse_dec = nn.Conv2d(channels, num_classes, 1)

    def _build_deeplab(self, num_classes: int, weights: str | os.PathLike | None,
                       output_stride: int, aux_loss: bool) -> None:
        """torchvision's DeepLabV3-ResNet-101 parts under its names: ``backbone`` (an
        IntermediateLayerGetter: 'out' = layer4, 'aux' = layer3), ``classifier``,
        ``aux_classifier`` (None without aux_loss)."""
        if output_stride not in DEEPLAB_DILATION:
            raise UserError(f"SegNet deeplabv3_resnet101: output_stride must be 8 or 16, got "
                            f"{output_stride}")
        if output_stride == 8:  # the builder as is; weights_backbone=None: no download
            model = deeplabv3_resnet101(weights=None, weights_backbone=None,
                                        num_classes=num_classes, aux_loss=aux_loss)
            backbone, classifier, aux = model.backbone, model.classifier, model.aux_classifier
        else:  # OS16 (METHOD.md 14.7.1): layer4 dilated only, ASPP rates 6/12/18
            trunk = resnet101(weights=None,
                              replace_stride_with_dilation=DEEPLAB_DILATION[output_stride])
            layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
            backbone = IntermediateLayerGetter(trunk, return_layers=layers)
            classifier = DeepLabHead(2048, num_classes, DEEPLAB_RATES[output_stride])
            aux = FCNHead(1024, num_classes) if aux_loss else None
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux
        self.output_stride = output_stride
        self.backbone_report = load_backbone_weights(
            self.backbone, weights, "ResNet-101", RESNET101_HINT)

    # ------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) ImageNet-normalised -> logits (N, num_classes, H, W)."""
        if self.arch in BIFPN_ARCHS:
            return self.fuse_dec(self._dense_features(x))
        self._check_batch(x)
        out = self.classifier(self.backbone(x)["out"])
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {'out': logits (N, num_classes, H, W)} plus ``'dense_ft'``
        (N, D, H, W), the decoder features BEACON uses (BiFPN archs), or ``'aux'``
        (N, num_classes, H, W), the layer3 head (DeepLab with aux_loss)."""
        if self.arch in BIFPN_ARCHS:
            dense = self._dense_features(x)
            return {"out": self.fuse_dec(dense), "dense_ft": dense}
        self._check_batch(x)
        feats = self.backbone(x)
        size = x.shape[-2:]
        result = {"out": F.interpolate(self.classifier(feats["out"]), size=size,
                                       mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            result["aux"] = F.interpolate(self.aux_classifier(feats["aux"]), size=size,
                                          mode="bilinear", align_corners=False)
        return result

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> dense_ft (N, D, H, W): the last BiFPN layer's Q3 (stride 8)
        upsampled to the input size, align_corners=True (METHOD.md 14.2.4). The classifier
        runs after the upsampling, as in MuSCLe (the two commute up to rounding)."""
        q3 = self.BIFPN(self.backbone(x))[0]
        return upsample_to(q3, x.shape[-2:])

    def _check_batch(self, x: torch.Tensor) -> None:
        # A train-mode batch of 1 reaches the ASPP pooling BN as a single value per channel,
        # which torch rejects cryptically (METHOD.md 14.7.1).
        if self.training and x.shape[0] < 2:
            raise UserError(f"SegNet {self.arch} in train mode needs a batch of >= 2 images "
                            f"(got {x.shape[0]}): the ASPP image-pooling BN sees one value "
                            f"per channel; use batch_size >= 2 and drop the last partial batch")


# ---------------------------------------------------------------------- checkpoint loading

def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The SegNet arch whose key layout ``state`` has, or None for none of them."""
    if "BIFPN.inp3.0.weight" in state and "backbone._blocks.54._bn2.weight" in state:
        return "muscle_b7"
    if "BIFPN.inp3.0.weight" in state and "backbone.layer4.1.bn2.weight" in state:
        return "toy"
    if any(k.startswith("classifier.0.convs.") for k in state):
        return "deeplabv3_resnet101"
    return None


HEAD_KEYS = ("fuse_dec.weight", "classifier.4.weight")  # the last classifier conv, per layout


def checkpoint_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The output channels of the SegNet checkpoint ``state`` (its last classifier conv's
    rows), or None when it holds none of the known heads."""
    for key in HEAD_KEYS:
        w = state.get(key)
        if isinstance(w, torch.Tensor) and w.ndim >= 1:
            return int(w.shape[0])
    return None


def load_seg_checkpoint(model: SegNet, path: str | os.PathLike,
                        allow_pickle: bool = False) -> LoadReport:
    """Load a trained SegNet checkpoint strictly into ``model`` (METHOD.md 14.0 G4).

    Accepts our engine's {'model': state, ...}, a plain state dict (MuSCLe's ``_<ep>.pth``),
    {'state_dict': state} and {'model_state_dict': state}; a ``module.`` prefix is stripped.
    Any missing or unexpected key or shape mismatch is a one-line UserError naming the file,
    the model's arch and, when recognisable, the file's; a file of the model's arch (or an
    unrecognised one) with another class count names both counts instead. ``allow_pickle``: see
    :func:`tool.common.checkpoint.read_checkpoint`.
    """
    path = str(path)
    state = read_state_dict(path, allow_pickle)
    report = compare_keys(model, state, path)
    problems = [f"{len(keys)} {what} ({_first(keys)})"
                for what, keys in (("missing keys", report.missing),
                                   ("unexpected keys", report.unexpected),
                                   ("shape mismatches", report.mismatched)) if keys]
    if problems:
        other = guess_arch(state)
        found = checkpoint_num_classes(state)
        if other in (None, model.arch) and found not in (None, model.num_classes):
            sets = ", ".join(f"{n} {d.title}" for n, d in DESCRIPTIONS.items())
            raise UserError(f"{path} is a SegNet checkpoint of {found} classes but num_classes "
                            f"is {model.num_classes}: set num_classes to the data set the file "
                            f"was trained on ({sets})")
        looks = ("" if other is None else
                 f" (it looks like a {other!r} checkpoint)" if other != model.arch else
                 " (the same arch with other settings: num_classes, bifpn_*, aux_loss?)")
        raise UserError(f"{path} is not a checkpoint of SegNet arch {model.arch!r}{looks}: "
                        f"{'; '.join(problems)}")
    model.load_state_dict(state)
    logger.info("SegNet %s weights: %s", model.arch, report)
    return report
