"""An 81-class run through all three stages: the toy COCO, prepared by ``data.prepare_coco``,
trained and evaluated with ``num_classes: 81`` by the same entry points as VOC (issue 15)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import eval_cam
import infer_cam
import infer_irn
import infer_seg
import train_irn
import train_mcl
import train_seg
from data import toy_coco
from data.coco import CAT_NAMES
from data.prepare_coco import prepare_coco
from data.voc import load_img_name_list, load_mask
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError

SEG = Path("ImageSets") / "Segmentation"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("coco")
    toy_coco.generate(base / "src", seed=3)
    prepare_coco(base / "src", base / "root", progress=False)
    return base / "root"


def _config(tiny_config: Path, root: Path) -> Path:
    p = tiny_config.parent / "tiny_coco.yaml"
    p.write_text(f"""\
_base_: {tiny_config}
data:
  voc12_root: {root}
  num_classes: 81
  train_list: "{{voc12_root}}/ImageSets/Segmentation/train.txt"
  val_list: "{{voc12_root}}/ImageSets/Segmentation/train_sub.txt"
  infer_list: "{{voc12_root}}/ImageSets/Segmentation/val.txt"
seg:
  seg_val_list: "{{voc12_root}}/ImageSets/Segmentation/val_sub.txt"
  seg_infer_list: "{{voc12_root}}/ImageSets/Segmentation/val.txt"
""")
    return p


def _labels_in(folder: Path, names: list[str]) -> set[int]:
    return set().union(*(np.unique(load_mask(folder / f"{n}.png")).tolist() for n in names))


def test_81_classes_through_all_three_stages(tiny_config, coco_root, tmp_path):
    cfg, run = str(_config(tiny_config, coco_root)), tmp_path / "run"
    train, val = coco_root / SEG / "train.txt", coco_root / SEG / "val.txt"
    gt = coco_root / "SegmentationClass"
    val_names = load_img_name_list(val)

    # stage 1: one epoch with the PL-Mix branch (its CRF over background + present classes)
    train_mcl.main(["--config", cfg, "--max_epoches", "1"])
    state = load_checkpoint(run / "last.ckpt")["model"]
    heads = [v for k, v in state.items() if k.endswith("weight") and v.shape[0] == 81]
    assert heads, "no 81-channel classifier in the stage-1 checkpoint"
    with pytest.raises(UserError, match=r"last.ckpt holds a resnet18 \(num_classes 81\) "
                                        r"checkpoint, not this config's network .*fc.weight"):
        train_mcl.main(["--config", str(tiny_config), "--session_name", str(run), "--resume"])
    for lst, out in ((train, "cam_train"), (val, "cam_val")):
        infer_cam.main(["--config", cfg, "--weights", str(run / "last.ckpt"), "--infer_list",
                        str(lst), "--out_npy", str(run / out), "--crf", "False"])
    keys = set().union(*(np.load(run / "cam_train" / f"{n}.npy", allow_pickle=True).item()
                         for n in load_img_name_list(train)))
    assert keys and max(keys) > 19 and keys <= set(range(80))  # 0-based COCO classes
    cam = eval_cam.main(["--list", str(val), "--predict_dir", str(run / "cam_val"), "--gt_dir",
                         str(gt), "--type", "npy", "--curve", "--num_classes", "81",
                         "--num_workers", "0"])
    assert cam.confusion.shape[1:] == (81, 81) and list(cam.per_class) == list(CAT_NAMES)

    # stage 2: IR labels, IRN, the random walk (soft output: 81 channels)
    train_irn.main(["--config", cfg, "--cam_dir", str(run / "cam_train")])
    infer_irn.main(["--config", cfg, "--cam_dir", str(run / "cam_val"), "--infer_list", str(val),
                    "--sem_seg_out_dir", str(run / "sem_val"), "--soft_output", "True"])
    soft = np.load(run / "sem_val" / f"{val_names[0]}.npy")
    assert soft.shape[2] == 81
    assert _labels_in(Path(f"{run / 'sem_val'}_png"), val_names) <= set(range(81))
    pseudo = eval_cam.main(["--list", str(val), "--predict_dir", f"{run / 'sem_val'}_png",
                            "--gt_dir", str(gt), "--type", "png", "--num_classes", "81",
                            "--num_workers", "0"])
    assert 0.0 <= pseudo.best_miou <= 100.0
    infer_irn.main(["--config", cfg, "--cam_dir", str(run / "cam_train"), "--infer_list",
                    str(train), "--sem_seg_out_dir", str(run / "sem_train")])

    # stage 3: segmentation on the PNG pseudo labels, then multi-scale inference
    train_seg.main(["--config", cfg, "--mask_root", f"{run / 'sem_train'}_png"])
    seg_state = load_checkpoint(run / "seg" / "last.ckpt")["model"]
    assert any(v.ndim == 4 and v.shape[0] == 81 for v in seg_state.values())
    infer_seg.main(["--config", cfg, "--seg_crf", "False"])
    pred = run / "seg" / "pred"
    assert _labels_in(pred, val_names) <= set(range(81))
    seg = eval_cam.main(["--list", str(val), "--predict_dir", str(pred), "--gt_dir", str(gt),
                         "--type", "png", "--num_classes", "81", "--num_workers", "0"])
    assert seg.confusion.shape[1:] == (81, 82) and torch.isfinite(torch.tensor(seg.best_miou))
