"""Stage-3 inference numerics (METHOD.md 14.6): multi-scale + flip softmax fusion and the CRF.

One image goes through the segmentation network at 6 scales, each also width-flipped (12
passes). Every pass is softmaxed, resized back to the image size with OpenCV's bilinear resize,
un-flipped, and the 12 probability maps are averaged (METHOD.md 14.8 S19: a mean of
probabilities, not of logits, taken after the per-pass resize). The released dense CRF then
refines the mean with a softened unary and kernel widths divided by 1.5 (14.8 S20), and the
label is the channel argmax.

Arrays are numpy unless said otherwise; images are RGB uint8 (H, W, 3); probability maps are
(C, H, W) float32 except the per-pass maps given to ``msf_fuse``, which are (h, w, C) as the
release keeps them for OpenCV.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from data import transforms as T
from data.voc import load_image
from tool.crf import CRFParams, dense_crf, softmax_unary

MSF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

# The released CRF (METHOD.md 14.6 step 6), as the effective values pydensecrf receives: the
# kernel widths are the nominal 3 and 32 divided by scale_factor 1.5 (14.8 S20). crf_refine's
# keyword defaults are the nominal values and give exactly this CRF.
CRF_PARAMS = {
    "iters": 4,  # inference; per-epoch validation runs the same CRF with 1 iteration
    "scale_factor": 1.5,
    "confidence": 0.5,
    "gaussian": {"sxy": 3.0 / 1.5, "compat": 1},
    "bilateral": {"sxy": 32.0 / 1.5, "srgb": 10, "compat": 10},
}
VAL_CRF_ITERS = 1  # mean-field iterations of the CRF in per-epoch validation (14.8 S20)

# cv2.resize refuses more channels than this (CV_CN_MAX: 512 in OpenCV 4, 128 in OpenCV 5)
_CV_MAX_CHANNELS = 128


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as a C-contiguous RGB uint8 array (H, W, 3).

    Grey, palette and CMYK files are converted to RGB first (METHOD.md 14.8 S24, fixed); an RGB
    file gives exactly its decoded pixels, as the release reads them.
    """
    return np.ascontiguousarray(np.asarray(load_image(path), dtype=np.uint8))


def scaled_inputs(img_pil: Image.Image, scales: Sequence[float] = MSF_SCALES,
                  flip: bool = True) -> list[np.ndarray]:
    """The network inputs of one image (METHOD.md 14.6 step 2).

    For each scale s: a PIL bicubic resize to (round(W*s), round(H*s)) (Python ``round``, so
    halves go to even: 187.5 -> 188, 562.5 -> 562), ImageNet normalisation (x/255 - mean)/std,
    CHW; with ``flip`` it is followed by its width flip.

    img_pil: PIL image (converted to RGB if it is not). Returns a list of np float32
    (3, h_s, w_s) C-contiguous arrays, ordered [s1, flip(s1), s2, flip(s2), ...]
    (2 * len(scales) entries with ``flip``, len(scales) without).
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    if img_pil.mode != "RGB":
        img_pil = img_pil.convert("RGB")
    out = []
    for s in scales:
        # rescale: bicubic to (round(W*s), round(H*s)); normalize: (h, w, 3) float32
        chw = np.ascontiguousarray(T.normalize(T.rescale(img_pil, float(s))).transpose(2, 0, 1))
        out.append(chw)
        if flip:
            out.append(np.ascontiguousarray(chw[:, :, ::-1]))
    return out


def _resize_linear(prob: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """cv2 INTER_LINEAR resize (half-pixel centres, edge clamp, no antialias) of an (h, w, C)
    map to np (H, W, C) float32, any C >= 1 (cv2 drops a single channel and caps C)."""
    prob = np.asarray(prob, dtype=np.float32)  # cv2 has no float16 resize
    h, w = out_hw
    if prob.shape[:2] == (h, w):
        return prob
    chunks = []
    for c0 in range(0, prob.shape[2], _CV_MAX_CHANNELS):
        part = np.ascontiguousarray(prob[:, :, c0:c0 + _CV_MAX_CHANNELS])
        r = cv2.resize(part, (w, h), interpolation=cv2.INTER_LINEAR)  # dsize is (W, H)
        chunks.append(r.reshape(h, w, part.shape[2]))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=2)


def msf_fuse(prob_maps: Sequence[np.ndarray], flipped: Sequence[bool],
             out_hw: tuple[int, int]) -> np.ndarray:
    """Mean of per-pass softmax maps at the image size (METHOD.md 14.6 steps 3-4, 14.8 S19).

    prob_maps: np (h_i, w_i, C) maps, one per pass; flipped: whether pass i saw a width-flipped
    input; out_hw: the image's (H, W). Each map is resized to (H, W) with OpenCV's bilinear
    resize, then flipped back along the width if flipped[i] (resize first, as released), and
    the maps are averaged (summed in pass order in float32, then divided by their number).
    Returns np (C, H, W) float32.
    """
    if len(prob_maps) != len(flipped):
        raise ValueError(f"{len(prob_maps)} maps but {len(flipped)} flip flags")
    if not prob_maps:
        raise ValueError("msf_fuse needs at least one map")
    h, w = (int(v) for v in out_hw)
    n_ch = {np.shape(p)[-1] for p in prob_maps}
    if len(n_ch) != 1 or any(np.ndim(p) != 3 for p in prob_maps):
        raise ValueError(f"maps must all be (h, w, C) with one C, got shapes "
                         f"{[np.shape(p) for p in prob_maps]}")
    acc = np.zeros((h, w, n_ch.pop()), np.float32)
    for prob, is_flipped in zip(prob_maps, flipped):
        r = _resize_linear(prob, (h, w))
        acc += r[:, ::-1] if is_flipped else r
    acc /= np.float32(len(prob_maps))
    return np.ascontiguousarray(acc.transpose(2, 0, 1))


def msf_predict(model: torch.nn.Module, img_rgb: np.ndarray,
                scales: Sequence[float] = MSF_SCALES, flip: bool = True,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Multi-scale + flip class probabilities of one image (METHOD.md 14.6 steps 1-4).

    model: a segmentation net already on ``device`` whose ``model(x)`` maps (1, 3, h, w) to
    logits (1, C, h, w) (a dict's ``'out'`` is taken too); it runs in eval mode under no_grad,
    one pass at a time, and its train/eval mode is restored afterwards. img_rgb: np uint8
    (H, W, 3). Returns np (C, H, W) float32, the mean over passes of the softmax maps.
    """
    img_rgb = np.asarray(img_rgb)
    if img_rgb.ndim != 3 or img_rgb.shape[2] != 3 or img_rgb.dtype != np.uint8:
        raise ValueError(f"img_rgb must be uint8 (H, W, 3), got {img_rgb.dtype} {img_rgb.shape}")
    inputs = scaled_inputs(Image.fromarray(img_rgb), scales, flip)
    flipped = [flip and i % 2 == 1 for i in range(len(inputs))]
    was_training = model.training
    model.eval()
    maps = []
    try:
        with torch.no_grad():
            for x in inputs:
                out = model(torch.from_numpy(x)[None].to(device))
                if isinstance(out, dict):
                    out = out["out"]
                prob = torch.softmax(out[0].float(), dim=0)  # over the C channels
                maps.append(prob.permute(1, 2, 0).cpu().numpy())  # (h, w, C) for cv2
    finally:
        model.train(was_training)
    return msf_fuse(maps, flipped, img_rgb.shape[:2])


def crf_unary(probs: np.ndarray, confidence: float = 0.5) -> np.ndarray:
    """The released CRF unary -log(clip(confidence * P + (1 - confidence) / C, 1e-5, 1)).

    probs: np (C, H, W). Returns np float32 (C, H*W), bit-identical to pydensecrf's
    ``unary_from_softmax(probs, scale=confidence)`` (METHOD.md 14.6 step 6); the uniform term
    is over the C channels given (21 on VOC, 81 on COCO). At the default 0.5 the clip never
    binds (0.5 / C > 1e-5 for any C up to 50,000).
    """
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence}")
    return softmax_unary(np.asarray(probs), float(confidence))


def crf_refine(img_rgb: np.ndarray, probs: np.ndarray, n_iters: int = 4,
               scale_factor: float = 1.5, confidence: float = 0.5, gauss_sxy: float = 3.0,
               gauss_compat: float = 1, bi_sxy: float = 32.0, bi_srgb: float = 10,
               bi_compat: float = 10) -> np.ndarray:
    """The released dense CRF over all C labels (METHOD.md 14.6 step 6, 14.8 S20).

    pydensecrf ``DenseCRF2D(W, H, C)`` with unary ``crf_unary(probs, confidence)``, a Potts
    Gaussian kernel of width gauss_sxy / scale_factor and a Potts bilateral kernel of width
    bi_sxy / scale_factor and colour width bi_srgb, then ``n_iters`` mean-field steps
    (0: just the normalised exp(-unary)). The defaults are CRF_PARAMS.

    img_rgb: np uint8 (H, W, 3) RGB (``load_rgb`` converts other modes); probs: np (C, H, W),
    e.g. ``msf_predict``'s output. Returns Q, np (C, H, W) float32, a distribution per pixel.
    """
    img_rgb, probs = np.asarray(img_rgb), np.asarray(probs)
    if img_rgb.ndim != 3 or img_rgb.shape[2] != 3 or img_rgb.dtype != np.uint8:
        raise ValueError(f"img_rgb must be uint8 (H, W, 3) RGB, got {img_rgb.dtype} "
                         f"{img_rgb.shape} (load images with load_rgb)")
    if probs.ndim != 3 or probs.shape[1:] != img_rgb.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) with (H, W) = {img_rgb.shape[:2]}, "
                         f"got {probs.shape}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence}")
    params = CRFParams(n_iters=int(n_iters), unary_scale=float(confidence),
                       gauss_sxy=gauss_sxy / scale_factor, gauss_compat=float(gauss_compat),
                       bi_sxy=bi_sxy / scale_factor, bi_srgb=float(bi_srgb),
                       bi_compat=float(bi_compat))
    # the project's full-label CRF (tool.crf.dense_crf, its label count = probs' C) builds
    # exactly the released model: Gaussian then bilateral kernel, Potts compatibilities,
    # unary = crf_unary
    return dense_crf(img_rgb, probs, params)


def predict_label(probs: np.ndarray) -> np.ndarray:
    """Channel argmax, ties to the lowest index (METHOD.md 14.6 step 7): np (C, H, W) -> np
    uint8 (H, W)."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or not 1 <= probs.shape[0] <= 256:
        raise ValueError(f"probs must be (C, H, W) with 1 <= C <= 256, got {probs.shape}")
    return probs.argmax(axis=0).astype(np.uint8)
