"""The paper configs: each parses, builds its model and runs one full training iteration (mix
branch and view losses included) on a tiny VOC-layout fixture; missing ImageNet weights stop
training at once with the file to get."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import train_mcl
from tool.cam.build import build_loaders, build_model, epoch_loader
from tool.cam.step import StepContext, TrainLosses, train_step
from tool.common.config import CONFIG_DIR, load_config, parse_config_args
from tool.common.errors import UserError
from tool.common.runtime import epoch_generators

CONFIGS = ["voc12_effb3.yaml", "voc12_resnet50.yaml",
           pytest.param("voc12_resnet38.yaml", marks=pytest.mark.slow),  # 105 M parameters
           "toy_pretrained.yaml"]


def _args(name, toy_voc, *extra):
    sets = toy_voc / "ImageSets/Segmentation"
    return parse_config_args(
        ["--config", str(CONFIG_DIR / name), "--voc12_root", str(toy_voc),
         "--train_list", str(sets / "train_aug.txt"), "--val_list", str(sets / "train.txt"),
         "--cls_labels", str(toy_voc / "cls_labels.npy"), "--crop_size", "64",
         "--view_size", "48", "--resize_long", "64,80", "--view_min_side", "64",
         "--batch_size", "2", "--num_workers", "0", "--crf_workers", "0", *extra],
        train_mcl.SECTIONS, "", CONFIG_DIR / name)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_one_full_iteration(name, toy_voc):
    args = _args(name, toy_voc, "--imagenet_required", "False")
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(args, device)
    train_ds, _ = build_loaders(args)
    batch = next(iter(epoch_loader(train_ds, args, 0)))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.wt_dec)
    ep = args.emd_start  # every loss of the schedule is active
    rng, gen = epoch_generators(0, ep)
    before = model.fc.weight.detach().clone()
    losses = train_step(TrainLosses(model), opt, batch, StepContext(args, ep, args.camT, rng, gen),
                        device)
    for key in ("loss_cls", "loss_er", "loss_mixseg", "loss_dice", "loss_iou", "loss_sc",
                "loss_pixpro", "loss_emd"):
        assert key in losses and math.isfinite(losses[key]), key
    assert not torch.equal(before, model.fc.weight)


@pytest.mark.parametrize("name,file", [("voc12_effb3.yaml", "adv-efficientnet-b3-cdd7c0f4.pth"),
                                       ("voc12_resnet50.yaml", "resnet50-0676ba61.pth"),
                                       ("voc12_resnet38.yaml", "ilsvrc-cls_rna-a1_cls1000")])
def test_missing_imagenet_weights_named(name, file, toy_voc, tmp_path):
    with pytest.raises(UserError, match=file):
        train_mcl.main(["--config", str(CONFIG_DIR / name), "--session_name", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # stopped before writing anything


def test_toy_pretrained_keeps_the_released_schedule_shape(toy_voc):
    args = _args("toy_pretrained.yaml", toy_voc)
    released = load_config(CONFIG_DIR / "base.yaml")
    starts = ("imc_start", "mix_start", "aug_start", "pixpro_start", "emd_start")
    for key in starts:  # same fraction of the run, rounded to the nearest epoch
        frac = Fraction(released["schedule"][key], released["train"]["max_epoches"])
        assert getattr(args, key) == math.floor(frac * args.max_epoches + Fraction(1, 2)), key
    assert args.backbone == "efflite0" and args.backbone_weights == "packaged"
    assert released["train"]["lr"] <= args.lr <= 1e-4  # the released order, not 1e-3
