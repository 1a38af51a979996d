"""Stage 3 training (METHOD.md 14.3-14.5): ``train_seg.py`` on the toy VOC set with pseudo
labels made from its masks (PNG and soft npy), exact resume, bad input before compute."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import train_seg
from data.voc import load_img_name_list, load_mask, save_label_png
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError
from tool.seg.train import LOSS_COLUMNS


def pseudo_labels(toy_voc, out, kind: str = "png") -> None:
    """The toy masks of train_aug as stage-2 outputs: palettised PNGs, or soft float16 npy
    (0.35 background channel, 0.9 on the mask's class, as infer_irn's soft output)."""
    out.mkdir(parents=True, exist_ok=True)
    for n in load_img_name_list(toy_voc / "ImageSets/Segmentation/train_aug.txt"):
        mask = load_mask(toy_voc / "SegmentationClass" / f"{n}.png")
        if kind == "png":
            save_label_png(mask, out / f"{n}.png")
            continue
        soft = np.zeros((*mask.shape, 21), np.float16)
        soft[..., 0] = 0.35
        for c in np.unique(mask):
            if 1 <= c <= 20:
                soft[..., c][mask == c] = 0.9
        np.save(out / f"{n}.npy", soft)


@pytest.fixture(scope="module")
def labels(toy_voc, tmp_path_factory):
    base = tmp_path_factory.mktemp("seg_labels")
    pseudo_labels(toy_voc, base / "png", "png")
    pseudo_labels(toy_voc, base / "soft", "soft")
    return base


def argv(tiny_config, labels, tmp_path, kind="png", *more: str) -> list[str]:
    return ["--config", str(tiny_config), "--mask_root", str(labels / kind), "--mask_type",
            kind, "--seg_session", str(tmp_path / "seg"), *more]


def metrics(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["png", "soft"])
def test_one_epoch_trains_and_validates(tiny_config, labels, tmp_path, kind):
    out = train_seg.main(argv(tiny_config, labels, tmp_path, kind))
    run = tmp_path / "seg"
    rows = metrics(run / "metrics.csv")
    assert len(rows) == 1 and out["epochs"] == 1
    for k in (*LOSS_COLUMNS, "val_miou"):
        assert np.isfinite(float(rows[0][k])), k
    assert float(rows[0]["loss_ce"]) > 0 and 0 <= float(rows[0]["val_miou"]) <= 100
    ckpt = load_checkpoint(run / "last.ckpt")
    assert "fuse_dec.weight" in ckpt["model"]  # the network's own keys (no DDP/forward wrapper)
    assert "val mIoU" in (run / "train.log").read_text()


def test_resume_equals_straight(tiny_config, labels, tmp_path):
    from tests.utils import stop_after_epoch_0

    straight, split = tmp_path / "a", tmp_path / "b"
    train_seg.main(argv(tiny_config, labels, straight, "soft", "--seg_num_epoches", "2",
                        "--lamb", "1.0"))
    first = argv(tiny_config, labels, split, "soft", "--seg_num_epoches", "2", "--lamb", "1.0")
    stop_after_epoch_0(train_seg.main, first)
    train_seg.main([*first, "--resume"])
    a, b = (load_checkpoint(p / "seg" / "last.ckpt") for p in (straight, split))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    rows_a, rows_b = (metrics(p / "seg" / "metrics.csv") for p in (straight, split))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows_a] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b]


def test_missing_pseudo_labels_before_compute(tiny_config, labels, tmp_path):
    with pytest.raises(UserError, match="not found") as e:
        train_seg.main(argv(tiny_config, labels, tmp_path, "png", "--mask_root",
                            str(tmp_path / "nowhere")))
    assert "nowhere" in str(e.value)
    assert not (tmp_path / "seg").exists()


@pytest.mark.parametrize("bad", ["channels", "value"])
def test_bad_pseudo_labels_before_compute(tiny_config, labels, tmp_path, toy_voc, bad):
    import shutil

    kind = "soft" if bad == "channels" else "png"
    own = tmp_path / kind
    shutil.copytree(labels / kind, own)
    name = load_img_name_list(toy_voc / "ImageSets/Segmentation/train_aug.txt")[3]
    if bad == "channels":
        np.save(own / f"{name}.npy", np.zeros((5, 5, 20), np.float16))
    else:
        arr = np.array(Image.open(own / f"{name}.png"))
        arr[0, 0] = 21
        save_label_png(arr, own / f"{name}.png")
    with pytest.raises(UserError) as e:
        train_seg.main(["--config", str(tiny_config), "--mask_root", str(own), "--mask_type",
                        kind, "--seg_session", str(tmp_path / "seg")])
    assert name in str(e.value)
    assert not (tmp_path / "seg").exists()


def test_deeplab_recipe_optimizer_and_poly():
    """METHOD.md 14.7.2: SGD with momentum, the aux head at 10x, poly decay every iteration;
    MuSCLe's recipe: Adam over every parameter with ReduceLROnPlateau."""
    from argparse import Namespace

    from net.seg_net import SegNet
    from tool.seg.train import build_optimizer

    args = Namespace(seg_optimizer="sgd", seg_lr=0.01, seg_momentum=0.9, seg_wt_dec=1e-4,
                     seg_lr_policy="poly", seg_poly_power=0.9, seg_lr_factor=0.5,
                     seg_min_lr=0.0, seg_trunk_lr_mult=1.0)
    net = SegNet("deeplabv3_resnet101", aux_loss=True)
    opt, sched = build_optimizer(args, net, steps=10)
    main, aux = opt.param_groups
    n_aux = sum(1 for n, _ in net.named_parameters() if n.startswith("aux_classifier."))
    assert len(aux["params"]) == n_aux > 0 and aux["lr"] == pytest.approx(0.1)
    assert len(main["params"]) + n_aux == len(list(net.parameters()))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    for _ in range(5):
        opt.step()
        sched.step()
    assert main["lr"] == pytest.approx(0.01 * 0.5 ** 0.9) and aux["lr"] == pytest.approx(
        0.1 * 0.5 ** 0.9)
    args.seg_optimizer, args.seg_lr_policy, args.seg_lr = "adam", "plateau", 1e-5
    args.seg_wt_dec, args.seg_min_lr = 1e-5, 5e-6
    opt, sched = build_optimizer(args, SegNet("toy", toy_width=0.25), steps=10)
    assert len(opt.param_groups) == 1 and isinstance(opt, torch.optim.Adam)
    sched.step(0.5)
    sched.step(0.4)  # patience 0: the first epoch without a gain halves the lr, once
    sched.step(0.3)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-6)
    # a trunk at a tenth of the heads' lr: its own group and its own plateau floor
    args.seg_lr, args.seg_min_lr, args.seg_trunk_lr_mult = 1e-3, 2.5e-4, 0.1
    net = SegNet("toy", toy_width=0.25)
    opt, sched = build_optimizer(args, net, steps=10)
    heads, trunk = opt.param_groups
    n_trunk = sum(1 for n, _ in net.named_parameters() if n.startswith("backbone."))
    assert len(trunk["params"]) == n_trunk > 0 and trunk["lr"] == pytest.approx(1e-4)
    assert len(heads["params"]) + n_trunk == len(list(net.parameters()))
    for score in (0.5, 0.4, 0.3, 0.2):  # halvings down to each group's floor
        sched.step(score)
    assert heads["lr"] == pytest.approx(2.5e-4) and trunk["lr"] == pytest.approx(2.5e-5)


@pytest.mark.slow
def test_torchrun_two_processes_validate_as_one(tiny_config, labels, tmp_path):
    """2 Gloo processes (BEACON on, each rank its own sampling stream): the epoch trains, and
    the distributed validation (each rank its share, confusions summed) equals one process
    validating the saved weights."""
    from tests.cam.test_ddp import torchrun
    from tool.common.config import resolve_config
    from tool.seg.train import build_seg_net, validate

    more = ("--lamb", "1.0", "--seg_batch_size", "2")
    torchrun("train_seg.py", *argv(tiny_config, labels, tmp_path, "soft", *more))
    run = tmp_path / "seg"
    assert "x 2 process" in (run / "train.log").read_text()
    rows = metrics(run / "metrics.csv")
    assert len(rows) == 1 and float(rows[0]["loss_beacon"]) != 0
    args = resolve_config(tiny_config, ["run", "data", "seg"], {"seg_session": str(run)})
    net = build_seg_net(args)
    net.load_state_dict(load_checkpoint(run / "last.ckpt")["model"])
    miou, _ = validate(net, load_img_name_list(args.seg_val_list), args.voc12_root, args.gt,
                       torch.device("cpu"))
    assert float(rows[0]["val_miou"]) == pytest.approx(miou, abs=1e-3)


def test_validate_over_81_classes_by_hand(toy_voc):
    """COCO's 81 classes: a network that says background everywhere has IoU(0) = background
    pixels / valid pixels and 0 for the other 80 classes, so mIoU = IoU(0) / 81 (VOC would be
    / 21); the confusion is 81 x 82 (a 21-class one would refuse GT or predictions past 20)."""
    from net.seg_net import SegNet
    from tool.seg.train import validate

    net = SegNet("toy", num_classes=81, toy_width=0.25)
    with torch.no_grad():
        net.fuse_dec.weight.zero_()
        net.fuse_dec.bias.zero_()
        net.fuse_dec.bias[0] = 5.0
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/train.txt")
    gts = [load_mask(toy_voc / "SegmentationClass" / f"{n}.png") for n in names]
    bg = sum(int((g == 0).sum()) for g in gts)
    valid = sum(int((g != 255).sum()) for g in gts)
    assert 0 < bg < valid
    miou, iou = validate(net, names, toy_voc, toy_voc / "SegmentationClass",
                         torch.device("cpu"))
    assert iou.shape == (81,) and (iou[1:] == 0).all()
    assert iou[0] == pytest.approx(100 * bg / valid, rel=1e-9)
    assert miou == pytest.approx(100 * bg / valid / 81, rel=1e-9)
