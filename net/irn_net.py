"""The Inter-pixel Relation Network of stage 2 (METHOD.md 13.3) and its checkpoint loader (13.7).

A frozen ResNet trunk (output stride 16, FixedBN, no gradients) feeds two heads at stride 4:
the **edge branch** (class-boundary logits, used by the random walk) and the **displacement
branch** (instance centroid offsets, kept for checkpoint compatibility; it never influences the
semantic pseudo labels). Sub-modules are registered under IRN's names *and* its aliases, so the
state dict is key for key the layout of IRN's ``EdgeDisplacement`` and reference files load
strictly through :func:`load_irn_checkpoint`.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from net.backbones import build_backbone
from net.weights import no_weights, read_state_dict
from tool.common.errors import UserError

logger = logging.getLogger(__name__)

IRN_BACKBONES = ("resnet50", "resnet18")  # ResNet trunks with the four strided stages IRN taps
TRUNK_STRIDES = (2, 2, 1)  # layer2..4: output stride 16 (METHOD.md 13.3.1)
EDGE_STRIDE = 4  # both heads' output grid
PAD_MULTIPLE = 16  # the trunk's output stride: inputs padded beyond the crop round up to it

# Keys reference checkpoints carry that no inference network has (METHOD.md 13.7.5 step 3):
# the training wrapper's path indices and direction offsets, the June-2019 upload's index
# vectors, and the extra statistics of its BatchNorm-based MeanShift.
TRAINING_ONLY_KEYS = re.compile(
    r"path_indices\d+|disp_target|ind_from|ind_to"
    r"|(fc_dp7\.4|dp_layers\.6\.4)\.(running_var|num_batches_tracked)")
_SHOW = 5  # keys named in one-line messages


def _conv1x1(c_in: int, c_out: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)


def _head(c_in: int, c_out: int, groups: int, up: int = 1) -> nn.Sequential:
    """1x1 conv (no bias), GroupNorm, optional bilinear upsampling by ``up``, ReLU.

    The ReLU follows the upsampling, as in IRN; the indices (0 conv, 1 GN) are checkpoint keys.
    """
    layers: list[nn.Module] = [_conv1x1(c_in, c_out), nn.GroupNorm(groups, c_out)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Top-left crop of ``x`` to the spatial size of ``ref`` (upsampling may overshoot it)."""
    return x[..., :ref.shape[-2], :ref.shape[-1]]


class MeanShift(nn.Module):
    """Subtracts the estimated mean displacement ``running_mean`` (2,) in eval mode only.

    In train mode it is the identity (METHOD.md 13.3.4); the buffer is set after training by
    :meth:`IRNet.estimate_mean_shift`.
    """

    def __init__(self, num_channels: int = 2) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 2, h, w) -> same."""
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class IRNet(nn.Module):
    """IRN's ``Net`` with the inference semantics of its ``EdgeDisplacement`` wrapper.

    Args:
        backbone: ``'resnet50'`` (the reference) or ``'resnet18'`` (toy; with ``backbone_width``).
        backbone_weights: a local torchvision ImageNet checkpoint for the trunk; None/'None' keeps
            the random initialisation. A missing file or backbone key is a UserError.
        crop_size: the training crop; :meth:`edge_displacement` zero-pads inputs to it.
        stride: the heads' output stride; only 4 exists.
        pad_to_crop: pad in :meth:`edge_displacement` (False for June-2019 checkpoints, 13.9 Q31).
        backbone_width: channel multiplier of the trunk (toy networks).

    The trunk is registered as ``<backbone>`` (``resnet50`` for the reference) and again as
    ``stage1..5`` and ``backbone``; the heads as ``fc_edge1..6`` / ``fc_dp1..7`` and again as
    ``edge_layers`` / ``dp_layers``; the mean shift as ``mean_shift`` and ``fc_dp7.4``.
    """

    def __init__(self, backbone: str = "resnet50",
                 backbone_weights: str | os.PathLike | None = None, crop_size: int = 512,
                 stride: int = EDGE_STRIDE, pad_to_crop: bool = True,
                 backbone_width: float = 1.0) -> None:
        super().__init__()
        if backbone not in IRN_BACKBONES:
            raise UserError(f"IRN backbone must be one of {', '.join(IRN_BACKBONES)}, "
                            f"got {backbone!r}")
        if stride != EDGE_STRIDE:
            raise UserError(f"IRN's heads work at stride {EDGE_STRIDE}, got stride {stride}")
        self.crop_size = int(crop_size)
        self.stride = stride
        self.pad_to_crop = pad_to_crop
        self.trunk_name = backbone

        # Frozen trunk: FixedBN, never optimised, run without autograd (METHOD.md 13.3.1).
        trunk = build_backbone(backbone, strides=TRUNK_STRIDES, width=backbone_width,
                               trainable_bn=False)
        trunk.load_imagenet_weights(backbone_weights)
        trunk.requires_grad_(False)
        self.backbone_source = None if no_weights(backbone_weights) else str(backbone_weights)
        self.add_module(backbone, trunk)
        self.stage1 = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.stage2 = nn.Sequential(trunk.layer1)
        self.stage3 = nn.Sequential(trunk.layer2)
        self.stage4 = nn.Sequential(trunk.layer3)
        self.stage5 = nn.Sequential(trunk.layer4)
        self.mean_shift = MeanShift(2)
        c1, c2, c3, c4, c5 = self.stage_channels(trunk)

        # Edge branch (13.3.2): 32 channels per stage at stride 4, fused into one logit.
        self.fc_edge1 = _head(c1, 32, 4)
        self.fc_edge2 = _head(c2, 32, 4)
        self.fc_edge3 = _head(c3, 32, 4, up=2)
        self.fc_edge4 = _head(c4, 32, 4, up=4)
        self.fc_edge5 = _head(c5, 32, 4, up=4)
        self.fc_edge6 = _conv1x1(32 * 5, 1, bias=True)

        # Displacement branch (13.3.3): deep stages fused at stride 8, then with shallow at 4.
        self.fc_dp1 = _head(c1, 64, 8)
        self.fc_dp2 = _head(c2, 128, 16)
        self.fc_dp3 = _head(c3, 256, 16)
        self.fc_dp4 = _head(c4, 256, 16, up=2)
        self.fc_dp5 = _head(c5, 256, 16, up=2)
        self.fc_dp6 = _head(256 * 3, 256, 16, up=2)
        self.fc_dp7 = nn.Sequential(_conv1x1(64 + 128 + 256, 256), nn.GroupNorm(16, 256),
                                    nn.ReLU(inplace=True), _conv1x1(256, 2), self.mean_shift)

        # IRN's aliases: the same modules again, so its checkpoints' keys all exist (13.9 Q19).
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4,
                                       self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3,
                                          self.fc_edge4, self.fc_edge5, self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4,
                                        self.fc_dp5, self.fc_dp6, self.fc_dp7])

    @staticmethod
    def stage_channels(trunk: nn.Module) -> tuple[int, int, int, int, int]:
        """Output channels of stage1..5 (stem, layer1..4) of a ResNet trunk."""
        c1, c3, c4, c5 = trunk.tap_channels  # stem, layer2..4; layer1 is not a tap
        return c1, trunk.layer2[0].conv1.in_channels, c3, c4, c5

    @property
    def trunk(self) -> nn.Module:
        """The frozen ResNet trunk (registered under the backbone's name)."""
        return getattr(self, self.trunk_name)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (N, 3, H, W) -> the five stage outputs x1..x5 at strides 4, 4, 8, 16, 16.

        Computed without autograd: the trunk is frozen, and IRN detaches every stage output.
        """
        with torch.no_grad():
            feats = [x]
            for stage in self.backbone:
                feats.append(stage(feats[-1]))
        return tuple(feats[1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) ImageNet-normalised -> (edge logits (N, 1, h, w), displacement
        (N, 2, h, w)), h = ceil(H / 4), w = ceil(W / 4); channel 0 of the displacement is dy.

        No sigmoid; the mean shift is subtracted in eval mode only (METHOD.md 13.3.6).
        """
        x1, x2, x3, x4, x5 = self.features(x)

        e1 = self.fc_edge1(x1)
        e2 = self.fc_edge2(x2)
        e3 = _crop_to(self.fc_edge3(x3), e2)
        e4 = _crop_to(self.fc_edge4(x4), e2)
        e5 = _crop_to(self.fc_edge5(x5), e2)
        edge = self.fc_edge6(torch.cat([e1, e2, e3, e4, e5], dim=1))

        d1 = self.fc_dp1(x1)
        d2 = self.fc_dp2(x2)
        d3 = self.fc_dp3(x3)
        d4 = _crop_to(self.fc_dp4(x4), d3)
        d5 = _crop_to(self.fc_dp5(x5), d3)
        up = _crop_to(self.fc_dp6(torch.cat([d3, d4, d5], dim=1)), d2)
        disp = self.fc_dp7(torch.cat([d1, d2, up], dim=1))
        return edge, disp

    def edge_displacement(self, x_pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IRN's ``EdgeDisplacement`` (METHOD.md 13.3.8): x_pair (2, 3, H, W) = [image,
        flip_W(image)], normalised -> (edge (1, h, w) in (0, 1), displacement (2, h, w)).

        The pair is zero-padded on the right and bottom to ``crop_size`` (GroupNorm then sees
        the statistics of padded training crops, 13.9 Q8); a side above it is padded up to a
        multiple of 16 instead of being cropped (13.9 Q7 fix). The edge is the sigmoid of the
        mean of the two logit maps (the flipped one flipped back on the h x w grid, 13.9 Q9);
        the displacement is the unflipped image's. Call in eval mode, under ``torch.no_grad()``.
        """
        if x_pair.dim() != 4 or x_pair.shape[0] != 2:
            raise ValueError(f"edge_displacement takes (2, 3, H, W) = [image, flip], "
                             f"got {tuple(x_pair.shape)}")
        height, width = x_pair.shape[-2:]
        h, w = (height - 1) // self.stride + 1, (width - 1) // self.stride + 1
        if self.pad_to_crop:
            x_pair = F.pad(x_pair, [0, self._padded(width) - width,
                                    0, self._padded(height) - height])
        edge, disp = self(x_pair)
        edge, disp = edge[..., :h, :w], disp[..., :h, :w]
        edge = torch.sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)
        return edge, disp[0]

    def _padded(self, side: int) -> int:
        """The padded length of a side: the crop, or the side rounded up to 16 above it."""
        return max(self.crop_size, -(-side // PAD_MULTIPLE) * PAD_MULTIPLE)

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(edge branch, displacement branch) parameters: 17 and 22 tensors (METHOD.md 13.3.5).

        IRN trains the displacement group at 10x the edge learning rate; the trunk is absent.
        """
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())

    def train(self, mode: bool = True) -> IRNet:
        """Set the heads' mode; the frozen trunk always stays in eval mode. Returns self."""
        super().train(mode)
        self.trunk.eval()
        self.backbone.eval()  # the stage containers (aliases) too
        return self

    @torch.no_grad()
    def estimate_mean_shift(self, batches: Iterable[torch.Tensor | dict]) -> torch.Tensor:
        """Set ``mean_shift.running_mean`` to the mean raw displacement (METHOD.md 13.5.5).

        ``batches``: image batches (N, 3, S, S), normalised and top-left cropped/padded to the
        crop, or dicts holding them under 'img' (a DataLoader over the infer list, drop_last).
        Each batch gives the mean over (batch, y, x) of the displacement before any shift; the
        estimate is the mean over batches. Runs in eval mode on the model's device and restores
        the previous mode. Returns the new running mean (2,).
        """
        was_training = self.training
        self.eval()
        self.mean_shift.running_mean.zero_()
        device = self.mean_shift.running_mean.device
        means = []
        for batch in batches:
            img = batch["img"] if isinstance(batch, dict) else batch
            _, disp = self(img.to(device))
            means.append(disp.mean(dim=(0, 2, 3)))
        self.train(was_training)
        if not means:
            raise UserError("no image batch to estimate IRN's mean shift from: the list is "
                            "shorter than one batch (batches drop the last partial one)")
        self.mean_shift.running_mean.copy_(torch.stack(means).mean(dim=0))
        return self.mean_shift.running_mean.clone()


# ------------------------------------------------------------------------ checkpoint loading

def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values; views of one storage (how torch.save keeps aliases) count as equal
    without comparing, NaNs included."""
    if (a.data_ptr(), a.stride(), a.dtype) == (b.data_ptr(), b.stride(), b.dtype):
        return True
    return torch.equal(a, b)


def alias_groups(model: nn.Module) -> list[list[str]]:
    """The state-dict keys of ``model`` grouped by the tensor they name (a module registered
    under several names gives one group of several keys), in state-dict order."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def load_irn_checkpoint(model: IRNet, path: str | os.PathLike,
                        allow_pickle: bool = False) -> dict[str, list[str]]:
    """Load an IRN checkpoint strictly into ``model`` (METHOD.md 13.7.5); returns the report
    {dropped, aliased, filled}.

    Accepts IRN's ``train_irn`` output (post-2019-09 layout, 1 056 keys), MuSCLe's released
    file (the same layout), the June-2019 layout, files of this project, DataParallel
    (``module.``) prefixes and {'state_dict' | 'model_state_dict' | 'model': ...} wrappers.

    - dropped: file keys only training uses (:data:`TRAINING_ONLY_KEYS`): path indices,
      ``disp_target``, ``ind_from``/``ind_to``, the old MeanShift's extra statistics;
    - aliased: model keys the file lacks, filled from another name of the same tensor (all the
      names of one tensor that the file has must hold equal values);
    - filled: trunk keys of a heads-only file (no trunk key at all), loaded again from the
      ImageNet file the model was built with (``backbone_weights``; an error without one).

    Any other missing or unexpected key, a shape mismatch or differing alias copies is a
    one-line UserError naming the file. ``allow_pickle``: see ``read_checkpoint``.
    """
    path = str(path)
    state = read_state_dict(path, allow_pickle)
    dropped = [k for k in state if TRAINING_ONLY_KEYS.fullmatch(k)]
    report: dict[str, list[str]] = {"dropped": dropped, "aliased": [], "filled": []}
    state = {k: v for k, v in state.items() if k not in set(dropped)}

    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise UserError(f"{path} does not fit the IRN network: {len(unexpected)} unexpected "
                        f"keys ({_first(unexpected)})")
    mismatched = [f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
                  for k, v in state.items() if v.shape != own[k].shape]
    if mismatched:
        raise UserError(f"{path} does not fit the IRN network: shape mismatch "
                        f"({_first(mismatched)})")

    trunk_keys = {f"{model.trunk_name}.{k}" for k in model.trunk.state_dict()}
    groups = alias_groups(model)
    trunk_groups = [g for g in groups if trunk_keys & set(g)]
    if not any(k in state for g in trunk_groups for k in g):
        if model.backbone_source is None:
            raise UserError(f"{path} holds no backbone weights (IRN heads only) and the "
                            f"network's backbone is randomly initialised: give "
                            f"backbone_weights, the ImageNet file it was trained from")
        for g in trunk_groups:  # placeholders; the ImageNet file is read again once all fits
            state.update({k: own[k] for k in g})
            report["filled"] += g

    missing = []
    for group in groups:
        present = [k for k in group if k in state]
        if not present:
            missing += group
            continue
        differing = [k for k in present[1:] if not _same(state[k], state[present[0]])]
        if differing:
            raise UserError(f"{path}: {differing[0]} differs from {present[0]}, which the "
                            f"network shares with it; the file is inconsistent")
        for k in group:
            if k not in state:
                state[k] = state[present[0]]
                report["aliased"].append(k)
    if missing:
        raise UserError(f"{path} does not fit the IRN network: {len(missing)} missing keys "
                        f"({_first(missing)})")
    model.load_state_dict(state, strict=True)
    if report["filled"]:
        model.trunk.load_imagenet_weights(model.backbone_source)  # undo any earlier load
        logger.info("%s: IRN heads only; backbone from %s", path, model.backbone_source)
    logger.info("IRN weights %s: %d keys loaded, %d training-only dropped, %d filled from "
                "aliases, %d backbone keys kept", path, len(state), len(report["dropped"]),
                len(report["aliased"]), len(report["filled"]))
    return report
