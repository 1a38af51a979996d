"""Inference: the npy format of METHOD.md 6, label PNGs, and resume-by-skipping after a kill."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import infer_cam
from data.voc import load_cls_labels, load_img_name_list
from tests.utils import tree_bytes
from tool.cam import infer
from tool.common import fileio
from tool.common.errors import UserError


def _infer(cfg, weights, out: Path, *extra):
    return infer_cam.main(["--config", str(cfg), "--weights", str(weights),
                           "--out_npy", str(out / "npy"), "--out_cam_npy", str(out / "cam"),
                           "--out_png", str(out / "png"), "--crf", "False", *extra])


def test_npy_format_present_classes_only(tiny_config, trained, toy_voc, tmp_path):
    _infer(tiny_config, trained, tmp_path / "o")
    labels = load_cls_labels(toy_voc / "cls_labels.npy")
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/val.txt")
    for name in names:
        w, h = Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").size
        for sub in ("npy", "cam"):
            d = np.load(tmp_path / "o" / sub / f"{name}.npy", allow_pickle=True).item()
            assert sorted(d) == list(np.nonzero(labels[name])[0])
            for m in d.values():
                assert m.dtype == np.float32 and m.shape == (h, w)
                # min-max normalised; a constant (all-zero) map stays constant, at -1 as released
                assert m.max() <= 1.0 + 1e-6 and (m.max() > 0.99 or m.min() == m.max())
        png = Image.open(tmp_path / "o" / "png" / f"{name}.png")
        assert png.mode == "P" and png.size == (w, h)
        present = set(np.unique(np.array(png))) - {0}
        assert present <= {int(k) + 1 for k in np.nonzero(labels[name])[0]}


def test_killed_run_resumes_to_identical_files(tiny_config, trained, tmp_path, monkeypatch):
    _infer(tiny_config, trained, tmp_path / "whole")
    real_save, calls = fileio.save_npy_dict, {"n": 0}

    def dying_save(path, d):  # the process dies while writing the third image's npy
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_save(path, d)

    monkeypatch.setattr(infer, "save_npy_dict", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _infer(tiny_config, trained, tmp_path / "killed")
    monkeypatch.setattr(infer, "save_npy_dict", real_save)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "killed").rglob("*"))
    written = _infer(tiny_config, trained, tmp_path / "killed")
    assert 0 < written < 4  # the finished images were skipped
    assert tree_bytes(tmp_path / "whole") == tree_bytes(tmp_path / "killed")
    assert _infer(tiny_config, trained, tmp_path / "killed") == 0


def test_camT_comes_from_checkpoint_unless_given(tiny_config, trained, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(infer, "run", lambda args, model, camT: seen.append(camT) or 0)
    ck = torch.load(trained, weights_only=False)
    _infer(tiny_config, trained, tmp_path / "a")
    _infer(tiny_config, trained, tmp_path / "b", "--camT", "0.11")
    _infer(tiny_config, trained, tmp_path / "c", "--camT=0.12")
    _infer(tiny_config, trained, tmp_path / "d", "--cam", "0.13")  # argparse abbreviation
    assert seen == [pytest.approx(ck["camT"]), 0.11, 0.12, 0.13]


def test_select_camT_given_then_checkpoint_then_config():
    args = Namespace(camT=0.3, given=frozenset())
    assert infer.select_camT(args, 0.45) == 0.45
    assert infer.select_camT(args, None) == 0.3
    args.given = frozenset({"camT"})
    assert infer.select_camT(args, 0.45) == 0.3


def test_missing_weights_is_a_user_error(tiny_config, tmp_path):
    with pytest.raises(UserError, match="--weights is required"):
        infer_cam.main(["--config", str(tiny_config), "--out_npy", str(tmp_path / "n")])


def test_crf_pngs_use_the_shared_crf(tiny_config, trained, toy_voc, tmp_path, monkeypatch):
    calls = []
    real = infer.crf_labels

    def spy(image, maps, present, **kw):
        calls.append(sorted(present))
        return real(image, maps, present, **kw)

    monkeypatch.setattr(infer, "crf_labels", spy)
    _infer(tiny_config, trained, tmp_path / "o", "--crf", "True")
    labels = load_cls_labels(toy_voc / "cls_labels.npy")
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/val.txt")
    assert calls == [sorted(int(k) + 1 for k in np.nonzero(labels[n])[0]) for n in names]
    for n in names:
        present = set(np.unique(np.array(Image.open(tmp_path / "o" / "png" / f"{n}.png"))))
        assert present <= {0} | {int(k) + 1 for k in np.nonzero(labels[n])[0]}


def test_sharded_inference_union_is_single_process(tiny_config, trained, tmp_path, monkeypatch):
    _infer(tiny_config, trained, tmp_path / "single")
    counts = []
    for rank in (0, 1):  # what `torchrun --nproc_per_node 2 infer_cam.py ...` runs, one by one
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        counts.append(_infer(tiny_config, trained, tmp_path / "sharded"))
    assert counts == [2, 2]
    assert tree_bytes(tmp_path / "single") == tree_bytes(tmp_path / "sharded")


def test_plain_state_dict_weights_use_config_camT(tiny_config, trained, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(infer, "run", lambda args, model, camT: seen.append(camT) or 0)
    plain = tmp_path / "plain.pth"
    torch.save(torch.load(trained, weights_only=False)["model"], plain)
    _infer(tiny_config, plain, tmp_path / "a")
    assert seen == [0.30]  # configs/base.yaml's camT: a plain state dict carries none


def test_trained_network_reads_its_checkpoint_once_and_no_imagenet_file(tiny_config, trained,
                                                                         monkeypatch):
    from tool.cam import build
    from tool.common import checkpoint
    from tool.common.config import INFER_SECTIONS, parse_config_args

    args = parse_config_args(["--config", str(tiny_config), "--backbone_weights", "/no/in1k.pth"],
                             INFER_SECTIONS, "", tiny_config)
    reads, real = [], checkpoint._torch_load
    monkeypatch.setattr(checkpoint, "_torch_load", lambda p: reads.append(p) or real(p))
    model, camT = build.load_trained(args, trained)
    assert reads == [str(trained)] and args.backbone_weights == "/no/in1k.pth"  # args untouched
    assert camT == pytest.approx(torch.load(trained, weights_only=False)["camT"])
    want = torch.load(trained, weights_only=False)["model"]
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
