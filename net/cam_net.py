"""The CAM network (METHOD.md 2.2-2.5): backbone, classifier, CAM and PCM ("SGC") refinement.

Layout of the released ``EfficientSeg`` in mode 'enc' with any registered backbone: logits
= fc(GAP(p7)); CAM = ReLU(1x1 conv of p7 with the *detached* fc weight); SGC = the CAM propagated
by a feature affinity built from the fused low/mid/deep taps.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from data.voc import NUM_CLASSES
from net.backbones import build_backbone

MODES = ("cam", "pix", "logits")
FUSE_CHANNELS = 128
PCM_EPS = 1e-5


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with align_corners=True (the identity when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def pcm(cam: torch.Tensor, feat: torch.Tensor, eps: float = PCM_EPS) -> torch.Tensor:
    """PCM (METHOD.md 2.4 steps 3-6): propagate ``cam`` (N, C, h, w) by the affinity of ``feat``.

    A_ij = ReLU(<f_i, f_j>) of L2-normalised feature vectors, normalised over i so each output
    position j is a convex-weighted average of the CAM: SGC_j = sum_i CAM_i A_ij / sum_i A_ij.
    feat: (N, D, h, w). Returns (N, C, h, w).
    """
    n, c, h, w = cam.shape
    f = feat.flatten(2)  # (N, D, hw)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    aff = F.relu(torch.bmm(f.transpose(1, 2), f))  # (N, hw, hw), symmetric
    aff = aff / (aff.sum(dim=1, keepdim=True) + eps)
    return torch.bmm(cam.flatten(2), aff).view(n, c, h, w)


class CAMNet(nn.Module):
    """CAM network over a named backbone (``resnet50``, ``resnet18``, ... see net.backbones).

    ``backbone_weights`` is a local ImageNet checkpoint loaded into the backbone at construction
    (None/'None'/'' = random init); ``backbone_kwargs`` go to the backbone builder.
    """

    def __init__(self, backbone: str, num_classes: int = NUM_CLASSES,
                 backbone_weights: str | os.PathLike | None = None, **backbone_kwargs) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, **backbone_kwargs)
        self.backbone.load_imagenet_weights(backbone_weights)
        c1, c3, c5, c7 = self.backbone.tap_channels
        self.fc = nn.Linear(c7, num_classes, bias=False)
        self.fuse = nn.Conv2d(c1 + c3 + c5, FUSE_CHANNELS, kernel_size=1, bias=True)
        self.amp_dtype: torch.dtype | None = None  # autocast dtype of the backbone (--amp)

    def forward(self, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, ...]:
        """x: (N, 3, H, W). Returns, by ``mode`` (METHOD.md 2.5):

        - 'cam': (cam, sgc, emb, logits); the CAM enters PCM detached, so SGC trains only fuse.
        - 'pix': (cam, sgc); the CAM enters PCM with grad, so SGC also trains the backbone.
        - 'logits': (emb, logits).

        cam, sgc: (N, num_classes, H, W), background at channel 0; emb: (N, c7);
        logits: (N, num_classes).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        with self._backbone_precision(x.device.type):
            taps = self.backbone(x)
        # The head (CAM, PCM affinity and its normalisation, resizing) always runs in float32.
        with torch.autocast(x.device.type, enabled=False):
            p1, p3, p5, p7 = (t.float() for t in taps)
            if mode == "logits":
                return self.classify(p7)
            cam = self.cam(p7)
            fused = self.fusion_features((p1, p3, p5), cam.shape[-2:])
            sgc = pcm(cam.detach() if mode == "cam" else cam, self.fuse(fused))
            outs = (_resize(cam, x.shape[-2:]), _resize(sgc, x.shape[-2:]))
            return outs + self.classify(p7) if mode == "cam" else outs

    def _backbone_precision(self, device_type: str) -> contextlib.AbstractContextManager:
        """Mixed precision (``amp_dtype``) covers the backbone, where the FLOPs are."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.amp_dtype)

    def classify(self, p7: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p7 (N, c7, h, w) -> (emb (N, c7) = GAP(p7), logits (N, num_classes))."""
        emb = p7.mean(dim=(2, 3))
        return emb, self.fc(emb)

    def cam(self, p7: torch.Tensor) -> torch.Tensor:
        """Raw CAM (N, num_classes, h, w); fc.weight is detached so CAM losses never train fc."""
        weight = self.fc.weight.detach()[:, :, None, None]
        return F.relu(F.conv2d(p7, weight))

    @torch.no_grad()
    def fusion_features(self, taps: tuple[torch.Tensor, ...], size: torch.Size) -> torch.Tensor:
        """ReLU of the taps resized to the CAM ``size``, concatenated: (N, c1 + c3 + c5, h, w).

        Computed without grad: the PCM losses never train the fusion path directly (METHOD.md 2.4).
        """
        return torch.cat([F.relu(_resize(t, size)) for t in taps], dim=1)
