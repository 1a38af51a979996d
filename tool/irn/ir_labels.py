"""Inter-pixel relation (IR) labels from CAMs (METHOD.md 13.2): the training targets of IRN.

Each image's CAMs are thresholded twice, at a high confident-foreground threshold and at a low
confident-background threshold; both label maps are snapped to colour edges by IRN's label CRF
and combined: a pixel is foreground where the high pass says so, background where both passes
say background, and ignored (255) where only the low pass sees an object.

A CAM dict comes in one of two forms (METHOD.md 13.2.1), told apart by a ``'keys'`` entry:

- the stage-1 hand-off (METHOD.md 6): {0-based class k: float32 (H, W) map}, present classes
  (k in 0..num_fg - 1: 0..19 on VOC, 0..79 on COCO);
- IRN's own ``make_cam`` dict: {'keys': (K,) 0-based ids, 'high_res': (K, H, W), 'cam': ...}.

Labels are 0 (background), k + 1 for class key k, and 255 (uncertain, ignored in training).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from data.voc import IGNORE_INDEX, NUM_CLASSES
from tool.common.errors import UserError
from tool.crf import CRFParams, crf_from_labels
from tool.eval.evaluation import check_cam_dict


@dataclass(frozen=True)
class IRCRFParams:
    """IRN's label CRF (METHOD.md 13.2.3), the same in both presets. It is not stage 1's CRF
    (``tool.crf.CRFParams`` defaults): the unary comes from a hard label map, not a softmax."""

    n_iters: int = 10
    gt_prob: float = 0.7
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bi_sxy: float = 50.0
    bi_srgb: float = 5.0
    bi_compat: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.gt_prob < 1:
            raise ValueError(f"IRCRFParams.gt_prob must be in (0, 1), got {self.gt_prob}")
        if self.n_iters < 0:
            raise ValueError(f"IRCRFParams.n_iters must be >= 0, got {self.n_iters}")

    def pairwise(self) -> CRFParams:
        """The pairwise kernels and iterations as ``tool.crf`` builds them."""
        return CRFParams(n_iters=self.n_iters, gauss_sxy=self.gauss_sxy,
                         gauss_compat=self.gauss_compat, bi_sxy=self.bi_sxy,
                         bi_srgb=self.bi_srgb, bi_compat=self.bi_compat)

    @classmethod
    def coerce(cls, params: IRCRFParams | Mapping[str, Any] | None) -> IRCRFParams:
        """None -> the defaults; a mapping of field names -> those fields over the defaults."""
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if isinstance(params, Mapping):
            unknown = set(params) - set(asdict(cls()))
            if unknown:
                raise ValueError(f"unknown IR-label CRF settings {sorted(unknown)}")
            return cls(**params)
        raise TypeError(f"crf_params must be an IRCRFParams, a dict or None, "
                        f"got {type(params).__name__}")


def crf_inference_label(img: np.ndarray, labels: np.ndarray, n_labels: int, t: int = 10,
                        gt_prob: float = 0.7, params: IRCRFParams | None = None) -> np.ndarray:
    """IRN's CRF of a hard label map (METHOD.md 13.2.3) -> np int64 (H, W) in 0..n_labels-1.

    img: np uint8 (H, W, 3) RGB; labels: np int (H, W) in 0..n_labels-1. The unary gives
    energy -ln(gt_prob) to the given label and -ln((1 - gt_prob) / (n_labels - 1)) to every
    other one; label 0 is an ordinary label. ``t`` mean-field steps; ``params`` (default IRN's)
    supplies the pairwise kernels, ``t`` and ``gt_prob`` win over its own. Ties of the final
    marginals go to the lowest label. n_labels = 1 has one possible answer (all 0), returned
    without the reference's division by zero (METHOD.md 13.9 Q12).
    """
    labels = np.asarray(labels)
    if labels.shape != img.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {img.shape[:2]} differ in size")
    if n_labels == 1:
        return np.zeros(labels.shape, np.int64)
    pairwise = replace((params or IRCRFParams()).pairwise(), n_iters=int(t))
    q = crf_from_labels(img, labels, n_labels, pairwise, gt_prob=gt_prob)
    return q.argmax(axis=0).astype(np.int64)


# ---------------------------------------------------------------- the two CAM forms


def cam_dict_to_irn(cam_dict: Mapping[int, np.ndarray], size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Hand-off dict -> IRN form (METHOD.md 13.2.1): (keys np int64 (K,) ascending,
    high_res np float32 (K, H, W)). An empty dict gives K = 0 and shape (0, H, W); ``size``
    = (H, W) is only read then. The dict is not validated here (:func:`read_cam_maps` does)."""
    keys = np.array(sorted(int(k) for k in cam_dict), np.int64)
    if keys.size == 0:
        return keys, np.zeros((0, *size), np.float32)
    high_res = np.stack([np.asarray(cam_dict[k], np.float32) for k in keys.tolist()])
    return keys, high_res


def irn_to_cam_dict(keys: Any, high_res: Any) -> dict[int, np.ndarray]:
    """IRN form -> hand-off dict {int(keys[i]): high_res[i]} (keys may be a torch tensor)."""
    keys = np.asarray(keys).reshape(-1)
    return {int(k): np.asarray(high_res[i], np.float32) for i, k in enumerate(keys.tolist())}


def irn_cam_dict(cam_dict: Mapping[int, np.ndarray], size: tuple[int, int]) -> dict[str, Any]:
    """A hand-off dict as a whole IRN ``make_cam`` dict {'keys', 'cam', 'high_res'} (numpy),
    with 'cam' = high_res bilinearly resized (align_corners=False, no antialias) to the stride-4
    grid (ceil(H/4), ceil(W/4)), as MuSCLe resizes for the random walk (METHOD.md 13.6.2)."""
    import torch
    import torch.nn.functional as F

    keys, high_res = cam_dict_to_irn(cam_dict, size)
    h, w = (high_res.shape[1] + 3) // 4, (high_res.shape[2] + 3) // 4
    if keys.size == 0:
        cam = np.zeros((0, h, w), np.float32)
    else:
        cam = F.interpolate(torch.from_numpy(high_res)[None], size=(h, w), mode="bilinear",
                            align_corners=False)[0].numpy()
    return {"keys": keys, "cam": cam, "high_res": high_res}


def _is_irn_form(cam_dict: Mapping) -> bool:
    return "keys" in cam_dict


def read_cam_maps(cam_dict: Any, size: tuple[int, int], where: str = "CAM dict", *,
                  num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Validate a CAM dict of either form against the image size -> (keys np int64 (K,),
    maps np float32 (K, H, W)).

    The hand-off form gets the evaluator's checks (same one-line errors): keys 0..num_fg - 1
    (num_fg = num_classes - 1: 0..19 on VOC, 0..79 on COCO), 2-D numeric maps of the image's
    size. The IRN form: 'keys' in the same range without repeats, 'high_res' (K, H, W). Any
    NaN is refused (argmax would take it for the maximum).
    """
    if isinstance(cam_dict, Mapping) and _is_irn_form(cam_dict):
        keys, maps = _read_irn_form(cam_dict, size, where, num_classes - 1)
    else:
        checked = check_cam_dict(cam_dict, tuple(size), where, num_classes=num_classes)
        keys, maps = cam_dict_to_irn(checked, size)
    if np.isnan(maps).any():
        raise UserError(f"{where}: a map contains NaN")
    return keys, maps


def _read_irn_form(d: Mapping, size: tuple[int, int], where: str, num_fg: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    if "high_res" not in d:
        raise UserError(f"{where}: an IRN-form dict ('keys') without 'high_res'")
    keys, maps = np.asarray(d["keys"]), np.asarray(d["high_res"])
    if keys.ndim != 1 or (keys.size and keys.dtype.kind not in "iu"):
        raise UserError(f"{where}: 'keys' must be a 1-D integer array, got shape {keys.shape} "
                        f"dtype {keys.dtype}")
    bad = [int(k) for k in keys if not 0 <= k < num_fg]
    if bad:
        raise UserError(f"{where}: 'keys' value {bad[0]} is not a class index 0..{num_fg - 1}")
    if len(set(keys.tolist())) != keys.size:
        raise UserError(f"{where}: 'keys' {keys.tolist()} repeat a class")
    if maps.shape != (keys.size, *size) or maps.dtype.kind not in "biuf":
        raise UserError(f"{where}: 'high_res' is {maps.shape} {maps.dtype}, expected "
                        f"({keys.size}, {size[0]}, {size[1]}) numeric for {keys.size} keys and "
                        f"the image's size")
    return keys.astype(np.int64), maps.astype(np.float32)


# ---------------------------------------------------------------- IR labels


def _threshold_pass(img: np.ndarray, maps: np.ndarray, lut: np.ndarray, thres: float,
                    crf: bool, params: IRCRFParams) -> np.ndarray:
    """One pass (METHOD.md 13.2.2 step 2): argmax of [thres; maps] (ties, including equality
    with the threshold, go to background), optionally the label CRF, then label values."""
    scores = np.concatenate([np.full((1, *maps.shape[1:]), thres, maps.dtype), maps])
    idx = scores.argmax(axis=0)
    if crf:
        idx = crf_inference_label(img, idx, len(lut), t=params.n_iters, gt_prob=params.gt_prob,
                                  params=params)
    return lut[idx]


def cam_to_ir_label(img: np.ndarray, cam_dict: Any, conf_fg: float, conf_bg: float,
                    crf: bool = True, crf_params: IRCRFParams | Mapping | None = None,
                    where: str = "CAM dict", *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """IR label of one image (METHOD.md 13.2.2) -> np uint8 (H, W) in {0, 1..num_fg, 255}
    (num_fg = num_classes - 1: 20 on VOC, 80 on COCO).

    img: np uint8 (H, W, 3) RGB as read from the JPEG (not normalised). cam_dict: hand-off
    {int k: np float32 (H, W)} or IRN form {'keys', 'high_res', ...} (``read_cam_maps``).
    conf_fg > conf_bg: the two thresholds. ``crf=False`` skips the CRF (argmax only).
    ``crf_params``: IRN's CRF by default. The dict keys are trusted (the image-level label is
    not read); ``num_classes`` bounds them (keys 0..num_classes - 2). An empty dict gives all
    background (METHOD.md 13.9 Q12).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"img must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    if not conf_fg > conf_bg:
        raise ValueError(f"conf_fg ({conf_fg}) must be above conf_bg ({conf_bg})")
    params = IRCRFParams.coerce(crf_params)
    keys, maps = read_cam_maps(cam_dict, img.shape[:2], where, num_classes=num_classes)
    if keys.size == 0:
        return np.zeros(img.shape[:2], np.uint8)
    lut = np.concatenate([[0], keys + 1]).astype(np.uint8)  # channel -> label value
    fg = _threshold_pass(img, maps, lut, conf_fg, crf, params)
    bg = _threshold_pass(img, maps, lut, conf_bg, crf, params)
    # the foreground pass wins wherever it sees a class; only its background is refined by
    # the background pass: background there too = confident background, else uncertain
    out = fg.copy()
    out[(fg == 0) & (bg != 0)] = IGNORE_INDEX
    return out
