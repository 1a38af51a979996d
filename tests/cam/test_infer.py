"""Inference: the npy format of METHOD.md 6, label PNGs, and resume-by-skipping after a kill."""
from __future__ import annotations

import hashlib
import json
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


# -- preflight and provenance (METHOD.md 12.7, METHOD.md 6 step 5) ---------------------------

def _other_checkpoint(trained, path):
    """The trained checkpoint with slightly other weights (another training run)."""
    ck = torch.load(trained, weights_only=False)
    ck["model"] = {k: v + 0.05 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, path)
    return path


def test_preflight_reports_every_problem_before_loading(tiny_config, trained, toy_voc,
                                                        tmp_path, monkeypatch):
    import shutil

    voc = tmp_path / "voc"
    shutil.copytree(toy_voc, voc)
    name = (voc / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    (voc / "JPEGImages" / f"{name}.jpg").unlink()
    (tmp_path / "npy").write_text("x")
    monkeypatch.setattr(infer, "load_trained", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(UserError) as e:
        infer_cam.main(["--config", str(tiny_config), "--weights", str(trained),
                        "--voc12_root", str(voc), "--out_npy", str(tmp_path / "npy"),
                        "--out_png", str(tmp_path / "p"), "--out_vis", str(tmp_path / "p"),
                        "--out_cam_npy", str(voc / "JPEGImages")])
    assert str(e.value).splitlines() == [
        "preflight found 4 problems:",
        f"  - image not found: {voc / 'JPEGImages' / name}.jpg",
        f"  - --out_npy {tmp_path / 'npy'} is a file, not a folder",
        f"  - --out_cam_npy {voc / 'JPEGImages'} is the image folder: its files would be taken "
        "for finished outputs or overwritten",
        f"  - --out_vis and --out_png are the same folder {tmp_path / 'p'}: their .png files "
        "would overwrite each other"]
    assert not (tmp_path / "p").exists()


def test_rerun_with_other_settings_is_refused_and_overwrite_starts_clean(
        tiny_config, trained, tmp_path):
    out, fresh = tmp_path / "o", tmp_path / "fresh"
    _infer(tiny_config, trained, out)
    before = tree_bytes(out)
    with pytest.raises(UserError) as e:
        _infer(tiny_config, trained, out, "--infer_scales", "1.0")
    msg = str(e.value)
    assert "\n" not in msg and "infer_scales [0.75, 1.0] -> [1.0]" in msg
    assert all(str(out / d) in msg for d in ("npy", "cam", "png")) and "--overwrite" in msg
    prov = json.loads((out / "npy" / ".provenance.json").read_text())["outputs"]["npy"]
    assert prov["infer_scales"] == [0.75, 1.0] and prov["backbone"] == "resnet18"
    assert prov["checkpoint_sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()
    other = _other_checkpoint(trained, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=r"^.*npy \(checkpoint_sha256 [0-9a-f]{12} -> "):
        _infer(tiny_config, other, out)
    with pytest.raises(UserError) as e:  # camT changes the label PNGs only
        _infer(tiny_config, trained, out, "--camT", "0.21")
    assert str(e.value).startswith(f"{out / 'png'} (camT ") and str(out / "npy") not in str(
        e.value)
    with pytest.raises(UserError, match=r"crf none -> on"):
        _infer(tiny_config, trained, out, "--crf", "True")
    assert tree_bytes(out) == before  # every refusal before any output

    assert _infer(tiny_config, other, out, "--overwrite") == 4
    _infer(tiny_config, other, fresh)
    assert tree_bytes(out) == tree_bytes(fresh)  # no file of the first run survives
    assert _infer(tiny_config, other, out) == 0  # same settings: resumed as before


def test_overwrite_removes_outputs_of_images_outside_the_list(tiny_config, trained, toy_voc,
                                                              tmp_path):
    out = tmp_path / "o"
    _infer(tiny_config, trained, out)
    val = (toy_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    short = tmp_path / "short.txt"
    short.write_text(val[0] + "\n")
    (out / "npy" / "notes.txt").write_text("kept")
    assert _infer(tiny_config, trained, out, "--infer_list", str(short), "--overwrite") == 1
    assert sorted(p.name for p in (out / "npy").iterdir()) == [
        ".provenance.json", f"{val[0]}.npy", "notes.txt"]


def test_same_settings_resume_also_with_another_list(tiny_config, trained, toy_voc, tmp_path):
    out = tmp_path / "o"
    val = (toy_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    part = tmp_path / "part.txt"
    part.write_text("\n".join(val[:2]) + "\n")
    assert _infer(tiny_config, trained, out, "--infer_list", str(part)) == 2
    assert _infer(tiny_config, trained, out) == 2  # the other two; the list is no setting
    assert _infer(tiny_config, trained, out) == 0


def test_outputs_without_a_record_are_refused(tiny_config, trained, tmp_path):
    out = tmp_path / "o"
    _infer(tiny_config, trained, out)
    for d in ("npy", "cam", "png"):  # as left by a version that recorded nothing
        (out / d / ".provenance.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"its npy files record no settings"):
        _infer(tiny_config, trained, out)
    assert _infer(tiny_config, trained, out, "--overwrite") == 4


def test_library_callers_may_replace_stale_outputs(tiny_config, trained, tmp_path):
    """What the demo does: outputs of another checkpoint are replaced, the same kept."""
    from tool.common.config import INFER_SECTIONS, resolve_config

    other = _other_checkpoint(trained, tmp_path / "other.ckpt")

    def run(weights):
        args = resolve_config(tiny_config, INFER_SECTIONS,
                              {"weights": str(weights), "out_npy": str(tmp_path / "o")},
                              attrs={"replace_stale": True})
        return infer.run_checkpoint(args)

    assert run(trained) == 4 and run(trained) == 0 and run(other) == 4
    _infer(tiny_config, other, tmp_path / "fresh")
    assert tree_bytes(tmp_path / "o") == tree_bytes(tmp_path / "fresh" / "npy")
