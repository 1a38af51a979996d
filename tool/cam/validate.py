"""Per-epoch validation (METHOD.md 5.6 steps 2-3) under the two selection protocols.

With ground truth (the released protocol): SGC at the validation scales + flip, summed, min-max
normalised, scored against the GT masks in memory at every threshold of the sweep in one pass.
The best threshold, its mIoU and the image-level mAP come back.

Without ground truth (``select_with_gt: false``): no mask is read; only the image-level
classification mAP over the validation list (which needs image labels only) comes back.

Under torchrun each rank scores its share of the list; the integer confusion counts and the
(image x class) score matrix are summed over the ranks, so every rank gets exactly the
single-process numbers. The class count is the run's ``num_classes`` (21 VOC, 81 COCO): C x C
confusion counts, C - 1 image-level classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.voc import NUM_CLASSES, load_mask
from tool.cam.msf import msf_cams, msf_scores, present_dict
from tool.common.dist import all_reduce_sum, rank_world
from tool.eval.evaluation import CurveResult, confusion_npy


@dataclass
class ValResult:
    """The image-level mAP (%) over the validation list, and with ground truth the mIoU curve
    over the threshold sweep (``tool.eval``'s result; None under the GT-free protocol)."""

    cls_map: float
    curve: CurveResult | None = None

    @property
    def best_t(self) -> float | None:
        return None if self.curve is None else self.curve.best_t

    @property
    def best_miou(self) -> float | None:
        return None if self.curve is None else self.curve.best_miou


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes with a positive image of the (non-interpolated) average precision.

    scores, labels: (N, K). AP_k = mean, over the positives of class k, of the precision among
    the images ranked at or above it (descending score; ties keep the list order). Percent.
    """
    aps = []
    for k in np.nonzero(labels.sum(0) > 0)[0]:
        order = np.argsort(-scores[:, k], kind="stable")
        hits = labels[order, k] > 0
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(precision[hits].mean())
    return 100.0 * float(np.mean(aps)) if aps else 0.0


def _validation_pass(model: torch.nn.Module, loader, gt_dir: str | Path | None,
                     thresholds: np.ndarray, device: torch.device, progress: bool,
                     num_classes: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """This rank's confusion counts (T, C, C) (None without ``gt_dir``) and the scores and
    labels (n_local, C - 1) of its images, in loader order; C = ``num_classes``."""
    was_training = model.training
    model.eval()
    conf = (None if gt_dir is None else
            np.zeros((len(thresholds), num_classes, num_classes), np.int64))
    scores, labels = [], []
    for sample in tqdm(loader, desc="validate", leave=False, disable=not progress):
        if gt_dir is None:  # no CAM needed: the classifier alone
            scores.append(msf_scores(model, sample["img"], device))
        else:
            _, sgc, s = msf_cams(model, sample["img"], sample["size"], device)
            scores.append(s)
            pred = present_dict(sgc, sample["label"])
            conf += confusion_npy(pred, load_mask(Path(gt_dir) / f"{sample['name']}.png"),
                                  thresholds, num_classes=num_classes)
        labels.append(np.asarray(sample["label"], np.float64))
    model.train(was_training)
    num_fg = num_classes - 1
    return conf, np.reshape(scores, (-1, num_fg)), np.reshape(labels, (-1, num_fg))


def _gather_rows(rows: np.ndarray, device: torch.device) -> np.ndarray:
    """Every rank's rows of a list sharded with ``tool.common.dist.shard`` (rank r holds items
    r, r + world, ...), in list order: scattered into zeros and summed over the ranks."""
    rank, world = rank_world()
    n_total = int(all_reduce_sum(np.array([len(rows)]), device)[0])
    full = np.zeros((n_total, rows.shape[1]), np.float64)
    full[rank::world] = rows
    return all_reduce_sum(full, device)


def validate(model: torch.nn.Module, loader, gt_dir: str | Path | None, thresholds: np.ndarray,
             device: torch.device, progress: bool = True, *,
             num_classes: int = NUM_CLASSES) -> ValResult:
    """Score ``loader`` (this rank's share of the list, see ``tool.common.dist.shard``) over all
    ranks.

    ``gt_dir`` None: the GT-free protocol (mAP only; no mask is opened). ``num_classes``: the
    run's (the trainer passes ``args.num_classes``), the network's output channels.
    """
    conf, scores, labels = _validation_pass(model, loader, gt_dir, thresholds, device, progress,
                                            num_classes)
    cls_map = mean_average_precision(_gather_rows(scores, device),
                                     _gather_rows(labels, device))
    if conf is None:
        return ValResult(cls_map)
    return ValResult(cls_map, CurveResult.from_confusion(all_reduce_sum(conf, device),
                                                         thresholds))
