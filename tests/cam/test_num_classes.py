"""Stage 1 with COCO's class count (num_classes 81: 80 foreground classes) on tiny inputs: the
CAM network's head, checkpoints of the other data set, the multi-scale maps and hand-off dicts,
label maps (argmax and CRF) and per-epoch validation, each against brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from net.cam_net import CAMNet
from tool.cam import build
from tool.cam.infer import label_from_dict
from tool.cam.msf import msf_cams, present_dict
from tool.cam.validate import mean_average_precision, validate
from tool.common.checkpoint import save_checkpoint
from tool.common.config import INFER_SECTIONS, resolve_config
from tool.common.errors import UserError
from tool.crf import dense_crf

CPU = torch.device("cpu")
SIZE = (11, 15)  # original image size (H, W)


def _args(cfg, num_classes: int):
    return resolve_config(cfg, INFER_SECTIONS, {"num_classes": num_classes})


def test_camnet_head_with_81_classes(tiny_config):
    args = _args(tiny_config, 81)
    torch.manual_seed(0)
    net = build.build_network(args).eval()
    assert net.fc.weight.shape[0] == 81
    with torch.no_grad():
        cam, sgc, emb, logits = net(torch.randn(2, 3, 32, 48), "cam")
    assert cam.shape == sgc.shape == (2, 81, 32, 48) and logits.shape == (2, 81)
    assert CAMNet("resnet18", width=0.25).fc.out_features == 21  # the default stays VOC's


@pytest.mark.parametrize("saved, wanted", [(21, 81), (81, 21)])
def test_checkpoint_of_the_other_data_set_is_one_line(tiny_config, tmp_path, saved, wanted):
    names = {21: "PASCAL VOC 2012", 81: "MS COCO 2014"}
    path = tmp_path / f"c{saved}.ckpt"
    save_checkpoint(path, {"model": build.build_network(_args(tiny_config, saved)).state_dict(),
                           "camT": 0.3})
    args = _args(tiny_config, wanted)
    msg = (f"{path} holds a CAM network of {saved} classes ({names[saved]}), this config's "
           f"num_classes is {wanted} ({names[wanted]}): use a checkpoint trained on "
           f"{names[wanted]} or set num_classes {saved}")
    with pytest.raises(UserError) as e:
        build.load_trained(args, path)  # inference
    assert str(e.value) == msg
    args.weights = str(path)
    with pytest.raises(UserError) as e:
        build.build_model(args, CPU)  # training from --weights
    assert str(e.value) == msg
    model, camT = build.load_trained(_args(tiny_config, saved), path)  # the right count loads
    assert model.fc.out_features == saved and camT == pytest.approx(0.3)


class _FixedMaps(torch.nn.Module):
    """(cam, sgc, emb, logits) of fixed random 81-channel maps for a pass and its flip."""

    def __init__(self, c: int = 81, hw: tuple[int, int] = (6, 8)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.maps = torch.rand(2, c, *hw, generator=g)
        self.logits = torch.randn(2, c, generator=g)

    def forward(self, x, mode):
        return self.maps, self.maps * 2, None, self.logits


def _label(*classes: int) -> torch.Tensor:
    y = torch.zeros(80)
    y[list(classes)] = 1
    return y


def test_msf_maps_and_dict_keys_up_to_79():
    model = _FixedMaps()
    cam, sgc, scores = msf_cams(model, [torch.zeros(3, 6, 8)] * 2, SIZE, CPU)
    assert cam.shape == sgc.shape == (80, *SIZE) and scores.shape == (80,)
    assert np.allclose(scores, torch.sigmoid(model.logits[:, 1:]).mean(0).numpy())
    d = present_dict(sgc, _label(0, 41, 79))
    assert sorted(d) == [0, 41, 79]  # 0-based foreground indices, the last COCO class is 79
    assert all(m.shape == SIZE and m.dtype == np.float32 for m in d.values())
    with pytest.raises(ValueError, match="class count"):
        present_dict(sgc, np.ones(20))  # a VOC label for COCO maps


def test_label_map_values_up_to_80_argmax_and_crf():
    rng = np.random.default_rng(3)
    d = {k: rng.random(SIZE).astype(np.float32) for k in (0, 41, 79)}
    label = label_from_dict(d, 0.3, SIZE, num_classes=81)
    stack = np.stack([np.full(SIZE, 0.3, np.float32), d[0], d[41], d[79]])
    assert np.array_equal(label, np.array([0, 1, 42, 80])[stack.argmax(0)])
    assert label.dtype == np.uint8 and 80 in label
    image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    crf = label_from_dict(d, 0.3, SIZE, image, num_classes=81)
    assert set(np.unique(crf)) <= {0, 1, 42, 80}
    maps = np.zeros((81, *SIZE), np.float32)
    maps[[0, 1, 42, 80]] = stack
    brute = dense_crf(image, maps).argmax(0)  # the CRF over all 81 labels
    assert (crf == brute).mean() >= 0.99


def test_validation_confusion_81_by_81(tmp_path):
    """Per-epoch validation with num_classes 81: (T, 81, 81) counts equal to the brute-force
    count of the thresholded argmax of each image's hand-off dict against its mask."""
    rng = np.random.default_rng(4)
    model = _FixedMaps()
    thresholds = np.array([0.2, 0.5, 0.8])
    labels = [_label(0, 41, 79), _label(5), _label(79, 12)]
    samples, want = [], np.zeros((3, 81, 81), np.int64)
    _, sgc, _ = msf_cams(model, [torch.zeros(3, 6, 8)] * 2, SIZE, CPU)
    for i, y in enumerate(labels):
        gt = rng.choice([0, 6, 13, 42, 80, 255], size=SIZE).astype(np.uint8)
        Image.fromarray(gt, mode="L").save(tmp_path / f"im{i}.png")
        samples.append({"name": f"im{i}", "img": [torch.zeros(3, 6, 8)] * 2, "size": SIZE,
                        "label": y})
        d = present_dict(sgc, y)
        for j, t in enumerate(thresholds):
            keys = sorted(d)
            pred = np.array([0] + [k + 1 for k in keys])[
                np.stack([np.full(SIZE, t, np.float32)] + [d[k] for k in keys]).argmax(0)]
            ok = gt != 255
            np.add.at(want[j], (gt[ok], pred[ok]), 1)
    val = validate(model, samples, tmp_path, thresholds, CPU, progress=False, num_classes=81)
    assert val.curve.confusion.shape == (3, 81, 81)
    assert np.array_equal(val.curve.confusion, want)
    assert want[:, 80].sum() > 0 and want[:, :, 80].sum() > 0  # class 80 is scored
    scores = np.stack([torch.sigmoid(model.logits[:, 1:]).mean(0).numpy()] * 3)
    assert val.cls_map == pytest.approx(
        mean_average_precision(scores, np.stack([y.numpy() for y in labels])))
