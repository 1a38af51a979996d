"""Per-epoch validation (SPEC 5.6 steps 2-3): SGC at the validation scales + flip, summed,
min-max normalised, scored in memory at every threshold of the sweep in one pass.

Under torchrun each rank scores its share of the list and the integer confusion counts are
summed over the ranks, so every rank gets exactly the single-process mIoU and threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.voc import load_mask
from tool.dist import all_reduce_sum
from tool.evaluation import confusion_npy, miou_from_confusion
from tool.msf import msf_cams, present_dict


@dataclass
class ValResult:
    thresholds: np.ndarray
    miou: np.ndarray          # (T,) percent
    confusion: np.ndarray     # (T, 21, 21) [gt, pred]

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.miou))  # first index wins ties (SPEC 5.6)

    @property
    def best_t(self) -> float:
        return float(self.thresholds[self.best_index])

    @property
    def best_miou(self) -> float:
        return float(self.miou[self.best_index])


def validation_confusion(model: torch.nn.Module, loader, gt_dir: str | Path,
                         thresholds: np.ndarray, device: torch.device,
                         progress: bool = True) -> np.ndarray:
    """Accumulate (T, 21, 21) confusion counts over the validation loader.

    Kept separate from the mIoU so counts from several processes can be summed first.
    """
    was_training = model.training
    model.eval()
    conf = np.zeros((len(thresholds), 21, 21), np.int64)
    for sample in tqdm(loader, desc="validate", leave=False, disable=not progress):
        _, sgc = msf_cams(model, sample["img"], sample["size"], device)
        pred = present_dict(sgc, sample["label"])
        gt = load_mask(Path(gt_dir) / f"{sample['name']}.png")
        conf += confusion_npy(pred, gt, thresholds)
    model.train(was_training)
    return conf


def validate(model: torch.nn.Module, loader, gt_dir: str | Path, thresholds: np.ndarray,
             device: torch.device, progress: bool = True) -> ValResult:
    """Score ``loader`` (this rank's share of the list) at every threshold, over all ranks."""
    conf = all_reduce_sum(validation_confusion(model, loader, gt_dir, thresholds, device,
                                               progress), device)
    miou = np.array([miou_from_confusion(c) for c in conf])
    return ValResult(np.asarray(thresholds), miou, conf)
