"""PL-Mix operations of METHOD.md 5.5: partner choice, pseudo labels, own-pair augmentation, mixing.

Tensors are torch and stay on the input's device; the OpenCV steps round-trip through the CPU.
Random draws come from explicit generators (D6). C = num_classes channels (21 VOC, 81 COCO),
read from the maps' shape; label ids 0..C-1 (uint8 on the OpenCV side: any C <= 255).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from tool.cam.camutils import cam_maxnorm
from tool.crf import CRFBatch, CRFParams, CRFPool

LABEL_INTERP = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT}


# ---- step 1: partner ---------------------------------------------------------------------------

def partner_index(n: int, generator: torch.Generator, random_order: bool = True) -> torch.Tensor:
    """Partner permutation pi (n,) long; fixed points allowed (METHOD.md 5.5 step 1).

    ``torch.randperm`` drawn from ``generator`` on its own device. ``random_order=False`` is the
    unused batch-reversal path (Q9).
    """
    if not random_order:
        return torch.arange(n - 1, -1, -1)
    return torch.randperm(n, generator=generator, device=generator.device)


def union_labels(labels: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Image-level union mixlabel = max(y, y[pi]): (N, K) -> (N, K); used only by SC."""
    return torch.maximum(labels, labels[perm])


# ---- step 4: pseudo labels ---------------------------------------------------------------------

def pseudo_label_maps(maps: torch.Tensor, label_bg: torch.Tensor, T: float) -> torch.Tensor:
    """M = float16(cam_maxnorm(maps) * label_bg) with M[:, 0] = float16(T) (Q21).

    maps (N, C, H, W); label_bg (N, C) or (N, C, 1, 1) -> (N, C, H, W) float16.
    """
    n = maps.shape[0]
    m = cam_maxnorm(maps) * label_bg.reshape(n, -1, 1, 1).to(maps.dtype)
    m = m.half()  # float16 rounding is the same on every device
    m[:, 0] = T  # rounded to float16 like the maps (Q21): 0.30 -> 0.30005
    return m


def pseudo_labels(maps: torch.Tensor, label_bg: torch.Tensor, T: float) -> torch.Tensor:
    """METHOD.md 5.5 step 4 without CRF: argmax of ``pseudo_label_maps`` -> (N, H, W) long.

    Ties go to the lower index; absent classes are 0 so only background or present classes win.
    Works for N = 1 (Q22: no squeeze).
    """
    return pseudo_label_maps(maps, label_bg, T).argmax(dim=1)


def crf_pseudo_labels(images: np.ndarray | torch.Tensor, maps: torch.Tensor,
                      label_bg: torch.Tensor, T: float, *, pool: CRFPool | None = None,
                      params: CRFParams = CRFParams()) -> torch.Tensor:
    """METHOD.md 5.5 step 4 with the dense CRF -> (N, H, W) long on ``maps.device``.

    images: (N, 3, H, W) uint8 (the de-normalised batch, numpy or torch); maps, label_bg as for
    ``pseudo_labels``; the same float16 M is the CRF input. params: the CRF settings;
    params.reduced=False (default) is the released CRF over all C labels, params.reduced=True
    runs background + present classes (``tool.crf.crf_labels``); either way the absent
    classes' uniform unary is (1 - s) / C with C = maps.shape[1], which the pool's jobs carry.
    pool: a ``CRFPool`` reused across calls (None: in this process, one image after another).
    """
    return start_crf_pseudo_labels(images, maps, label_bg, T, pool=pool, params=params).result()


def start_crf_pseudo_labels(images: np.ndarray | torch.Tensor, maps: torch.Tensor,
                            label_bg: torch.Tensor, T: float, *, pool: CRFPool | None = None,
                            params: CRFParams = CRFParams()) -> PendingLabels:
    """``crf_pseudo_labels`` started in ``pool`` (``CRFPool.map_async``), not waited for: the
    handle's ``result()`` is the same (N, H, W) long tensor on ``maps.device``."""
    m16 = pseudo_label_maps(maps, label_bg, T).cpu().numpy()
    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    imgs = np.ascontiguousarray(np.asarray(imgs, dtype=np.uint8).transpose(0, 2, 3, 1))
    present = label_bg.reshape(maps.shape[0], -1).detach().cpu().numpy()[:, 1:] > 0
    presents = [np.flatnonzero(row) + 1 for row in present]
    pool = CRFPool(0) if pool is None else pool
    return PendingLabels(pool.map_async(imgs, m16, presents, params), maps.device)


class PendingLabels:
    """CRF pseudo labels being computed (``start_crf_pseudo_labels``)."""

    def __init__(self, batch: CRFBatch, device: torch.device) -> None:
        self.batch, self.device = batch, device

    def result(self) -> torch.Tensor:
        """Wait for the CRF -> labels (N, H, W) long on the maps' device."""
        return torch.from_numpy(self.batch.result()).long().to(self.device)


# ---- step 5: augmentation of the own pair ------------------------------------------------------

def draw_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """n integer angles in [-90, 89] degrees (the release's np.random.randint(-90, 90))."""
    return rng.integers(-90, 90, size=n)


def _image_np(img: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> np (N, H, W, C) float32, C-contiguous, never sharing memory."""
    return np.array(img.detach().float().permute(0, 2, 3, 1).cpu().numpy(), order="C")


def _label_np(label: torch.Tensor) -> np.ndarray:
    """(N, H, W) integer tensor -> np (N, H, W) uint8 (OpenCV has no int64 warps/resizes)."""
    lab = label.detach().cpu()
    if lab.numel() and (lab.min() < 0 or lab.max() > 255):
        raise ValueError("label ids must lie in 0..255")
    return np.ascontiguousarray(lab.numpy().astype(np.uint8))


def _as_image(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(like.device, like.dtype)


def _as_label(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(arr).to(like.device, like.dtype)


def rotate_pair(img: torch.Tensor, label: torch.Tensor, angles: Sequence[int] | np.ndarray,
                released_centre: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md 5.5 step 5.1: rotate each sample by its integer angle (degrees, positive =
    counter-clockwise, OpenCV convention) about (W/2, H/2), scale 1, same size.

    img (N, 3, H, W) float normalised: bilinear, border 0 (the mean colour); label (N, H, W):
    nearest, border 0 (background). Returns new tensors on the input device and dtype.
    The released centre (W/2, H/2) is half a pixel off the image centre in pixel-centre
    coordinates, so +-90 degrees give np.rot90 moved by one pixel; ``released_centre=False``
    rotates about ((W-1)/2, (H-1)/2), where +-90 degrees are exactly np.rot90.
    """
    h, w = label.shape[-2:]
    centre = (w / 2, h / 2) if released_centre else ((w - 1) / 2, (h - 1) / 2)
    im, lab = _image_np(img), _label_np(label)
    out_im, out_lab = np.empty_like(im), np.empty_like(lab)
    for k, angle in enumerate(angles):
        rot = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
        out_im[k] = cv2.warpAffine(im[k], rot, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(h, w, -1)
        out_lab[k] = cv2.warpAffine(lab[k], rot, (w, h), flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _as_image(out_im, img), _as_label(out_lab, label)


def _place_axis(rng: np.random.Generator, new: int, old: int) -> tuple[slice, slice]:
    """(source, target) slices along one axis: crop if the resized size is >= the original,
    else paste. Offsets use an exclusive upper bound (Q26); an unchanged size draws nothing."""
    if new >= old:
        o = int(rng.integers(0, new - old)) if new > old else 0
        return slice(o, o + old), slice(0, old)
    o = int(rng.integers(0, old - new))
    return slice(0, new), slice(o, o + new)


def _scale_place_one(im: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                     label_flag: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample: im (H, W, C) float32, lab (H, W) uint8 -> same shapes."""
    h, w = lab.shape
    s = rng.uniform(0.5, 2.0)
    nh, nw = int(h * s), int(w * s)  # H and W separately (Q22 fix: non-square inputs)
    if (nh, nw) == (h, w):
        return im.copy(), lab.copy()
    im_r = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, -1)
    lab_r = cv2.resize(lab, (nw, nh), interpolation=label_flag)  # bilinear on ids: Q10
    sy, ty = _place_axis(rng, nh, h)
    sx, tx = _place_axis(rng, nw, w)
    out_im, out_lab = np.zeros_like(im), np.zeros_like(lab)  # mean colour / background
    out_im[ty, tx] = im_r[sy, sx]
    out_lab[ty, tx] = lab_r[sy, sx]
    return out_im, out_lab


def random_scale_place(img: torch.Tensor, label: torch.Tensor, rng: np.random.Generator,
                       label_interp: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md 5.5 step 5.2: per sample s ~ U(0.5, 2), resize to (int(H s), int(W s)), then a
    random crop (s >= 1) or a paste into a zero canvas (s < 1).

    img (N, 3, H, W) float normalised (bilinear); label (N, H, W) ids, 'bilinear' as released
    (Q10: cv2's uint8 rounding creates intermediate ids on boundaries) or 'nearest' (the fix,
    centre-aligned). rng: numpy Generator. Returns new tensors on the input device and dtype.
    """
    if label_interp not in LABEL_INTERP:
        raise ValueError(f"label_interp must be one of {sorted(LABEL_INTERP)}")
    im, lab = _image_np(img), _label_np(label)
    for k in range(len(im)):
        im[k], lab[k] = _scale_place_one(im[k], lab[k], rng, LABEL_INTERP[label_interp])
    return _as_image(im, img), _as_label(lab, label)


# ---- steps 6 and 7: mix ------------------------------------------------------------------------

def mix_labels(own: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Y_mix = own where own > 0 else partner: (N, H, W) -> (N, H, W)."""
    return torch.where(own > 0, own, partner)


def mix_images(img_own: torch.Tensor, img_partner: torch.Tensor,
               own_label: torch.Tensor) -> torch.Tensor:
    """I_mix = img_own * m + img_partner * (1 - m), m = own_label > 0 (hard paste in normalised
    space): (N, 3, H, W), (N, 3, H, W), (N, H, W) -> (N, 3, H, W). Inputs are not modified (the
    release overwrites the label with the mask in place)."""
    m = (own_label > 0).unsqueeze(1).to(img_own.dtype)
    return img_own * m + img_partner * (1 - m)
