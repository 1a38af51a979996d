"""Stage 2 training (METHOD.md 13.5): ``train_irn.py`` on the toy VOC set, with CAM dicts made
from its masks: the IR labels made first, the loss columns, exact resume, the mean shift."""
from __future__ import annotations

import csv
import logging
import subprocess

import numpy as np
import pytest
import torch

import train_irn
from data.voc import load_img_name_list, load_mask
from tests.irn.test_make_ir_labels import soft_cams
from tests.utils import stop_after_epoch_0
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError
from tool.common.fileio import save_npy_dict
from tool.irn.train import LOSS_COLUMNS

# 12 train_aug images, batch 4: 3 iterations an epoch; radius 5 fits the 16 x 16 grid of crop 64
FAST = ["--irn_backbone", "resnet18", "--irn_backbone_width", "0.25", "--irn_crop_size", "64",
        "--irn_train_radius", "5", "--irn_batch_size", "4", "--ir_label_workers", "0",
        "--ir_crf", "False", "--irn_log_every", "100", "--irn_checkpoint_every", "0"]


@pytest.fixture(scope="module")
def cam_dir(toy_voc, tmp_path_factory):
    """Hand-off CAM dicts of the toy train_aug list, from its masks."""
    out = tmp_path_factory.mktemp("irn_train_cams")
    for n in load_img_name_list(toy_voc / "ImageSets/Segmentation/train_aug.txt"):
        save_npy_dict(out / f"{n}.npy",
                      soft_cams(load_mask(toy_voc / "SegmentationClass" / f"{n}.png")))
    return out


def argv(tiny_config, cam_dir, tmp_path, *more: str) -> list[str]:
    return ["--config", str(tiny_config), "--cam_dir", str(cam_dir),
            "--ir_label_out_dir", str(tmp_path / "ir_label"),
            "--irn_session", str(tmp_path / "irn"), *FAST, *more]


def metrics(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_epoch_makes_labels_and_trains(tiny_config, cam_dir, tmp_path):
    # IRN never reads the image-level labels: a missing cls_labels file is no problem
    out = train_irn.main(argv(tiny_config, cam_dir, tmp_path, "--irn_num_epoches", "1",
                              "--cls_labels", str(tmp_path / "none.npy")))
    labels = sorted((tmp_path / "ir_label").glob("*.png"))
    assert len(labels) == 12  # made first, for the whole train_aug list
    run = tmp_path / "irn"
    log_text = (run / "train.log").read_text()
    assert "making them first" in log_text and "IR labels: 12 written" in log_text
    assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
    rows = metrics(run / "metrics.csv")
    assert len(rows) == 1
    for k in LOSS_COLUMNS:
        assert np.isfinite(float(rows[0][k])), k
    assert float(rows[0]["loss"]) > 0
    # the last epoch ends with the mean shift, saved in the checkpoint
    ckpt = load_checkpoint(run / "last.ckpt")
    shift = ckpt["model"]["mean_shift.running_mean"]
    assert torch.count_nonzero(shift) == 2
    assert out["mean_shift"] == pytest.approx(shift.tolist())
    # metrics.csv keeps 6 significant digits
    assert float(rows[0]["mean_shift_y"]) == pytest.approx(float(shift[0]), rel=1e-5)
    assert ckpt["optimizer"]["global_step"] == 3  # 12 images / batch 4, one epoch


def test_resume_equals_straight(tiny_config, cam_dir, tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), split.mkdir()
    train_irn.main(argv(tiny_config, cam_dir, straight, "--irn_num_epoches", "2"))
    # the same labels folder contents (made again, deterministic), the run in two parts: the
    # first part trains epoch 0 of a 2-epoch schedule and is stopped by its epoch limit
    first = argv(tiny_config, cam_dir, split, "--irn_num_epoches", "2")
    stop_after_epoch_0(train_irn.main, first)
    train_irn.main([*first, "--resume"])
    a, b = (load_checkpoint(p / "irn" / "last.ckpt") for p in (straight, split))
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    rows_a, rows_b = (metrics(p / "irn" / "metrics.csv") for p in (straight, split))
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows_b]
    assert torch.count_nonzero(b["model"]["mean_shift.running_mean"]) == 2


def test_missing_cam_dir_is_one_line_before_compute(tiny_config, tmp_path, caplog):
    with pytest.raises(UserError) as e:
        train_irn.main(argv(tiny_config, tmp_path / "nowhere", tmp_path))
    msg = str(e.value)
    assert "nowhere" in msg and "\n" not in msg
    assert not (tmp_path / "irn").exists()  # nothing trained or claimed


def test_fresh_run_over_a_finished_one_is_refused(tiny_config, cam_dir, tmp_path):
    args = argv(tiny_config, cam_dir, tmp_path, "--irn_num_epoches", "1")
    train_irn.main(args)
    with pytest.raises(UserError, match="--resume|--overwrite"):
        train_irn.main(args)
    logging.getLogger("plmix").handlers.clear()


def test_init_trunk_from_stage1_checkpoint(trained):
    """--irn_init_from_cam: the stage-1 backbone's tensors become the frozen IRN trunk."""
    from net.irn_net import IRNet
    from tool.irn.train import init_trunk_from_cam

    net = IRNet("resnet18", None, crop_size=64, backbone_width=0.25)
    n = init_trunk_from_cam(net, str(trained))
    state = load_checkpoint(trained)["model"]
    assert n == len(net.trunk.state_dict())
    for k, v in net.trunk.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"]), k
    wider = IRNet("resnet18", None, crop_size=64, backbone_width=0.5)
    with pytest.raises(UserError, match="irn_init_from_cam .* of shape"):
        init_trunk_from_cam(wider, str(trained))


def test_presets_set_the_training_keys():
    """--irn_preset sets the irn_* training keys too (METHOD.md 13.10)."""
    from tool.common.config import CONFIG_DIR, load_config
    from tool.irn.presets import get_preset

    irn = load_config(CONFIG_DIR / "base.yaml")["irn"]
    flat = get_preset("irn").flat()
    for key in ("irn_crop_size", "irn_batch_size", "irn_num_epoches", "irn_learning_rate",
                "irn_lr_mult_disp", "irn_weight_decay", "irn_momentum", "irn_poly_power",
                "irn_rescale", "irn_train_radius", "irn_backbone", "irn_train_displacement"):
        assert key in irn and key in flat, key
        assert flat[key] == irn[key], key  # base.yaml holds the (shared) reference values


def test_without_displacement(tiny_config, cam_dir, tmp_path):
    """irn_train_displacement False (METHOD.md 13.9 Q22): the displacement terms are 0 and the
    displacement branch keeps its initial weights."""
    train_irn.main(argv(tiny_config, cam_dir, tmp_path, "--irn_num_epoches", "1",
                        "--irn_train_displacement", "False"))
    rows = metrics(tmp_path / "irn" / "metrics.csv")
    assert float(rows[0]["dp_fg"]) == float(rows[0]["dp_bg"]) == 0.0
    from tool.common.config import resolve_config
    from tool.common.runtime import seed_everything
    from tool.irn.train import build_net

    args = resolve_config(tiny_config, ["run", "data", "irn"],
                          {"irn_backbone": "resnet18", "irn_backbone_width": 0.25,
                           "irn_crop_size": 64})
    seed_everything(args.seed)
    fresh = build_net(args).state_dict()
    trained = load_checkpoint(tmp_path / "irn" / "last.ckpt")["model"]
    assert torch.equal(trained["fc_dp1.0.weight"], fresh["fc_dp1.0.weight"])
    assert not torch.equal(trained["fc_edge6.weight"], fresh["fc_edge6.weight"])


@pytest.mark.slow
def test_torchrun_wants_the_labels_first_then_trains(tiny_config, cam_dir, tmp_path):
    """Under torchrun the labels are not made inside the run (the other ranks would wait at
    their first collective past its timeout): one line naming make_ir_labels.py, nothing
    claimed. Once made, 2 Gloo processes train with the displacement branch off (unused
    parameters under DDP)."""
    import make_ir_labels
    from tests.cam.test_ddp import TORCHRUN
    from tests.cam.test_ddp import run as run_cmd

    cmd = [*TORCHRUN, "train_irn.py", *argv(tiny_config, cam_dir, tmp_path,
                                             "--irn_num_epoches", "1", "--irn_batch_size",
                                             "2", "--irn_train_displacement", "False")]
    refused = run_cmd(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode != 0
    assert "have no IR label" in err and "make_ir_labels.py" in err
    assert not (tmp_path / "irn").exists()
    make_ir_labels.main(argv(tiny_config, cam_dir, tmp_path))
    run_cmd(*cmd)
    ckpt = load_checkpoint(tmp_path / "irn" / "last.ckpt")
    assert ckpt["optimizer"]["global_step"] == 3  # 12 images / 2 ranks / batch 2
    rows = metrics(tmp_path / "irn" / "metrics.csv")
    assert float(rows[0]["dp_fg"]) == 0.0 and float(rows[0]["neg"]) > 0


def test_coco_keys_train_as_the_voc_ones(tiny_config, cam_dir, tmp_path):
    """``--num_classes 81``: CAM keys moved up by 60 give IR labels up to 80, all of them
    classes of the pair labels, so one epoch has the losses of the VOC keys' epoch."""
    coco_cams = tmp_path / "coco_cams"
    for p in cam_dir.glob("*.npy"):
        cams = np.load(p, allow_pickle=True).item()
        save_npy_dict(coco_cams / p.name, {k + 60: v for k, v in cams.items()})
    train_irn.main(argv(tiny_config, cam_dir, tmp_path / "voc", "--irn_num_epoches", "1"))
    train_irn.main(argv(tiny_config, coco_cams, tmp_path / "coco", "--irn_num_epoches", "1",
                        "--num_classes", "81"))
    values = np.unique(np.concatenate([load_mask(p).ravel() for p in
                                       (tmp_path / "coco" / "ir_label").glob("*.png")]))
    assert values.max() == 255 and 60 < values[-2] <= 80
    voc, coco = (metrics(tmp_path / d / "irn" / "metrics.csv")[0] for d in ("voc", "coco"))
    assert [coco[k] for k in LOSS_COLUMNS] == [voc[k] for k in LOSS_COLUMNS]
