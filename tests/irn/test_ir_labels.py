"""IR labels of one image (METHOD.md 13.2): the canned example, the two CAM forms, the CRF,
bad dicts, and the presets of METHOD.md 13.10."""
from __future__ import annotations

import warnings

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_labels

from tool.common.config import CONFIG_DIR, load_config, resolve_config
from tool.common.errors import UserError
from tool.irn.ir_labels import (
    IRCRFParams,
    cam_dict_to_irn,
    cam_to_ir_label,
    crf_inference_label,
    irn_cam_dict,
    irn_to_cam_dict,
    read_cam_maps,
)
from tool.irn.presets import PRESETS, apply_preset, get_preset


def worked_example():
    """METHOD.md 13.2.4: a 24 x 32 image, red left half, blue right half, and a person map
    max(0, 1 - |x - 8.5| / 10) in every row."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :16] = (200, 30, 30)
    img[:, 16:] = (20, 20, 200)
    row = np.maximum(0, 1 - np.abs(np.arange(32) - 8.5) / 10).astype(np.float32)
    return img, {14: np.tile(row, (24, 1))}


# ---------------------------------------------------------------- canned check 4


def test_canned_example_with_crf():
    img, cams = worked_example()
    label = cam_to_ir_label(img, cams, 0.30, 0.05)
    assert label.dtype == np.uint8 and label.shape == (24, 32)
    # both passes snap to the colour edge: no uncertain pixel is left
    assert (label == np.array([15] * 16 + [0] * 16, np.uint8)).all()


def test_canned_example_without_crf():
    img, cams = worked_example()
    label = cam_to_ir_label(img, cams, 0.30, 0.05, crf=False)
    row = [255, 255] + [15] * 14 + [255, 255] + [0] * 14
    assert (label == np.array(row, np.uint8)).all()


def test_irn_form_gives_the_same_labels():
    img, cams = worked_example()
    keys, high_res = cam_dict_to_irn(cams, (24, 32))
    irn = {"keys": torch.from_numpy(keys), "cam": None, "high_res": high_res}
    for crf in (True, False):
        assert (cam_to_ir_label(img, irn, 0.30, 0.05, crf=crf)
                == cam_to_ir_label(img, cams, 0.30, 0.05, crf=crf)).all()


def test_threshold_equality_goes_to_background_and_the_table():
    """Max <= conf_bg: background; conf_bg < max <= conf_fg: uncertain; above: the class
    (float32 comparisons, as the reference pads a float32 array with the threshold)."""
    img = np.zeros((1, 6, 3), np.uint8)
    vals = np.array([[0.05, 0.0501, 0.3, 0.30001, 0.9, 0.0]], np.float32)
    other = np.array([[0, 0, 0, 0.5, 0.95, 0]], np.float32)  # class 2 beats class 0 at x = 4
    label = cam_to_ir_label(img, {0: vals, 2: other}, 0.3, 0.05, crf=False)
    assert label.tolist() == [[0, 255, 255, 3, 3, 0]]


def test_empty_dict_is_all_background_without_warnings():
    img = np.zeros((5, 7, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        label = cam_to_ir_label(img, {}, 0.4, 0.1)
        irn = cam_to_ir_label(img, {"keys": np.zeros(0, np.int64),
                                    "high_res": np.zeros((0, 5, 7), np.float32)}, 0.4, 0.1)
    assert label.dtype == np.uint8 and not label.any() and not irn.any()


def test_thresholds_in_the_wrong_order_are_refused():
    img, cams = worked_example()
    with pytest.raises(ValueError, match="conf_fg"):
        cam_to_ir_label(img, cams, 0.1, 0.3)


# ---------------------------------------------------------------- the CRF


def reference_label_crf(img, labels, n_labels, t=10, gt_prob=0.7):
    """METHOD.md 13.2.3 written straight from its table."""
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)
    return np.argmax(np.array(d.inference(t)).reshape(n_labels, h, w), axis=0)


def test_crf_is_the_label_crf_of_the_table():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)
    img[:, 13:] //= 4  # an edge for the bilateral kernel
    labels = rng.integers(0, 3, (20, 27))
    labels[:, :10] = 1
    out = crf_inference_label(img, labels, 3)
    assert out.dtype == np.int64 and out.shape == (20, 27)
    assert (out == reference_label_crf(img, labels, 3)).all()
    assert (crf_inference_label(img, labels, 3, t=2, gt_prob=0.9)
            == reference_label_crf(img, labels, 3, t=2, gt_prob=0.9)).all()


def test_crf_with_one_label_is_all_zero():
    img = np.zeros((4, 5, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = crf_inference_label(img, np.zeros((4, 5), np.int64), 1)
    assert out.dtype == np.int64 and not out.any()


def test_crf_params_are_used():
    img, cams = worked_example()
    # a near-certain unary and no iterations: the CRF keeps the thresholded labels
    label = cam_to_ir_label(img, cams, 0.30, 0.05, crf_params={"n_iters": 0})
    assert (label == cam_to_ir_label(img, cams, 0.30, 0.05, crf=False)).all()
    with pytest.raises(ValueError, match="unknown"):
        cam_to_ir_label(img, cams, 0.30, 0.05, crf_params={"iters": 3})
    with pytest.raises(ValueError, match="gt_prob"):
        IRCRFParams(gt_prob=1.0)


# ---------------------------------------------------------------- the two forms


def test_adapters_round_trip():
    rng = np.random.default_rng(1)
    d = {14: rng.random((9, 11), dtype=np.float32), 2: rng.random((9, 11), dtype=np.float32)}
    keys, high_res = cam_dict_to_irn(d, (9, 11))
    assert keys.dtype == np.int64 and keys.tolist() == [2, 14]
    assert high_res.dtype == np.float32 and high_res.shape == (2, 9, 11)
    assert (high_res[1] == d[14]).all()
    back = irn_to_cam_dict(keys, high_res)
    assert list(back) == [2, 14] and all(type(k) is int for k in back)
    assert all((back[k] == d[k]).all() for k in d)
    back_t = irn_to_cam_dict(torch.from_numpy(keys), high_res)  # IRN stores a torch tensor
    assert sorted(back_t) == [2, 14]
    keys0, hr0 = cam_dict_to_irn({}, (9, 11))
    assert keys0.shape == (0,) and keys0.dtype == np.int64 and hr0.shape == (0, 9, 11)
    assert irn_to_cam_dict(keys0, hr0) == {}


def test_irn_cam_dict_adds_the_stride4_cams():
    rng = np.random.default_rng(2)
    d = {5: rng.random((21, 30), dtype=np.float32)}
    irn = irn_cam_dict(d, (21, 30))
    assert irn["cam"].shape == (1, 6, 8) and irn["cam"].dtype == np.float32
    want = F.interpolate(torch.from_numpy(d[5])[None, None], size=(6, 8), mode="bilinear",
                         align_corners=False)[0]
    assert np.allclose(irn["cam"], want.numpy(), atol=0, rtol=0)
    assert irn_cam_dict({}, (21, 30))["cam"].shape == (0, 6, 8)


@pytest.mark.parametrize("cams,message", [
    ({25: np.zeros((4, 5), np.float32)}, "CAM dict: dict key 25 is not a class index 0..19"),
    ({3: np.zeros((4, 6), np.float32)}, "CAM dict: map of class 3 is 4x6 but the image is 4x5"),
    ({"3": np.zeros((4, 5), np.float32)}, "dict key '3' is not a class index"),
    ({3: np.full((4, 5), np.nan, np.float32)}, "CAM dict: a map contains NaN"),
    ({"keys": np.array([20]), "high_res": np.zeros((1, 4, 5))}, "'keys' value 20 is not"),
    ({"keys": np.array([2, 2]), "high_res": np.zeros((2, 4, 5))}, "repeat a class"),
    ({"keys": np.array([2]), "high_res": np.zeros((1, 4, 6))}, "'high_res' is (1, 4, 6)"),
    ({"keys": np.array([2])}, "without 'high_res'"),
], ids=["key25", "size", "strkey", "nan", "irn-key", "irn-repeat", "irn-size", "irn-missing"])
def test_bad_dicts_are_one_line_errors(cams, message):
    with pytest.raises(UserError) as e:
        read_cam_maps(cams, (4, 5))
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- presets


def test_presets_hold_the_table_of_13_10():
    plmix, irn = get_preset("plmix"), get_preset("irn")
    assert (plmix.conf_fg, plmix.conf_bg, irn.conf_fg, irn.conf_bg) == (0.40, 0.10, 0.30, 0.05)
    assert (plmix.beta, plmix.exp_times, plmix.sem_seg_bg_thres) == (8, 6, 0.35)
    assert (irn.beta, irn.exp_times, irn.sem_seg_bg_thres) == (10, 8, 0.25)
    assert (plmix.rw_engine, irn.rw_engine) == ("auto", "dense")
    assert (plmix.label_png, irn.label_png) == ("palette", "gray")
    assert plmix.crf == irn.crf == IRCRFParams()
    assert IRCRFParams() == IRCRFParams(10, 0.7, 3, 3, 50, 5, 10)
    assert plmix.infer_radius == irn.infer_radius == 5 and plmix.train_radius == 10
    same = ("crop_size", "batch_size", "epochs", "lr", "lr_mult_disp", "weight_decay",
            "sgd_momentum", "poly_power", "rescale", "backbone_strides")
    assert all(getattr(plmix, k) == getattr(irn, k) for k in same)
    assert (plmix.lr, plmix.lr_mult_disp, plmix.sgd_momentum) == (0.1, 10.0, 1e-4)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("muscle")
    assert set(PRESETS) == {"plmix", "irn"}


def test_base_yaml_holds_the_plmix_preset():
    irn_section = load_config(CONFIG_DIR / "base.yaml")["irn"]
    flat = get_preset("plmix").flat()
    shared = [k for k in irn_section if k in flat]
    assert {"conf_fg_thres", "conf_bg_thres", "ir_crf", "ir_crf_iters", "ir_crf_gt_prob",
            "ir_crf_bi_sxy"} <= set(shared)
    assert {k: irn_section[k] for k in shared} == {k: flat[k] for k in shared}


def test_apply_preset_keeps_the_flags_given():
    args = resolve_config(CONFIG_DIR / "base.yaml", ["data", "irn"], {"conf_bg_thres": 0.02})
    assert apply_preset(args, None) == []
    keys = apply_preset(args, "irn")
    assert "conf_fg_thres" in keys and "conf_bg_thres" not in keys
    assert args.conf_fg_thres == 0.30 and args.conf_bg_thres == 0.02
    assert args.config_dict["irn"]["conf_fg_thres"] == 0.30
    assert args.crop_size == 448  # stage 1's key of the same name stays: only irn is touched
