"""The IR labels of a list (METHOD.md 13.2.5): ``make_ir_labels`` and ``make_ir_labels.py`` on
the toy VOC set, with CAM dicts made from its masks."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import make_ir_labels as entry
from data.voc import load_image, load_img_name_list, load_mask
from tests.irn.cams import soft_cams
from tool.common.errors import UserError
from tool.common.fileio import TEMP_NAME, atomic_save, save_npy_dict
from tool.irn import make_labels
from tool.irn.ir_labels import cam_to_ir_label
from tool.irn.make_labels import make_ir_labels

N = 4  # images: the toy train_aug list's first ones


@pytest.fixture(scope="module")
def shared(toy_voc, tmp_path_factory):
    """(names, voc root, CAM folder) of the first N toy train_aug images, and their labels
    made once, in-process (the reference the other runs are compared with)."""
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/train_aug.txt")[:N]
    cam_dir = tmp_path_factory.mktemp("irn_cams")
    for n in names:
        save_npy_dict(cam_dir / f"{n}.npy", soft_cams(load_mask(
            toy_voc / "SegmentationClass" / f"{n}.png")))
    out = tmp_path_factory.mktemp("irn_ref")
    assert make_ir_labels(names, toy_voc, cam_dir, out, 0.4, 0.1, progress=False) == N
    return (names, toy_voc, cam_dir), pngs(out)


@pytest.fixture
def toy(shared, tmp_path):
    """The shared inputs with a CAM folder of this test's own (tests may damage it)."""
    (names, voc, cam_dir), _ = shared
    own = tmp_path / "cams"
    shutil.copytree(cam_dir, own)
    return names, voc, own


@pytest.fixture
def reference(shared):
    return shared[1]


def run(toy, out_dir, **kw):
    names, voc, cam_dir = toy
    kw = {"conf_fg": 0.4, "conf_bg": 0.1, "workers": 0, "progress": False, **kw}
    return make_ir_labels(kw.pop("names", names), voc, cam_dir, out_dir, **kw)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im)


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_png(p) for p in sorted(folder.glob("*.png"))}


def test_writes_one_label_per_image_and_resumes(toy, reference, tmp_path):
    names, voc, cam_dir = toy
    out = tmp_path / "ir"
    assert run(toy, out) == N
    labels = pngs(out)
    assert sorted(labels) == sorted(names)
    assert all((labels[n] == reference[n]).all() for n in names)
    n = names[0]  # the list run labels as one image does
    img = np.asarray(load_image(voc / "JPEGImages" / f"{n}.jpg"))
    cams = np.load(cam_dir / f"{n}.npy", allow_pickle=True).item()
    assert (labels[n] == cam_to_ir_label(img, cams, 0.4, 0.1)).all()
    for n, label in labels.items():
        cams = np.load(cam_dir / f"{n}.npy", allow_pickle=True).item()
        assert set(np.unique(label)) <= {0, 255, *(k + 1 for k in cams)}
    assert all((label == 255).any() and (label == 0).any() for label in labels.values())
    assert all(len(set(np.unique(label)) - {0, 255}) for label in labels.values())
    record = json.loads((out / ".provenance.json").read_text())["outputs"]["ir_label"]
    assert record["conf_fg"] == 0.4 and record["crf"]["n_iters"] == 10

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert run(toy, out) == 0  # everything done: nothing is recomputed
    (out / f"{names[2]}.png").unlink()
    assert run(toy, out) == 1
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png") if p.stem != names[2]} == \
        {p: t for p, t in stamps.items() if p.stem != names[2]}
    assert (read_png(out / f"{names[2]}.png") == labels[names[2]]).all()
    assert not (out / ".lock").exists()


def test_missing_inputs_are_reported_together_before_compute(toy, tmp_path):
    names, voc, cam_dir = toy
    (cam_dir / f"{names[1]}.npy").unlink()
    out = tmp_path / "ir"
    with pytest.raises(UserError) as e:
        run(toy, out, names=[*names, "ghost_1", "ghost_2"])
    msg = str(e.value)
    assert f"CAM files missing from {cam_dir} (3): {names[1]}.npy, ghost_1.npy, ghost_2.npy" \
        in msg
    assert "images missing from" in msg and "(2): ghost_1.jpg, ghost_2.jpg" in msg
    assert not out.exists()  # nothing was computed or created

    with pytest.raises(UserError, match="is not a folder"):
        run((names, voc, tmp_path / "no_cams"), out)


def test_worker_error_is_one_line_and_the_others_are_written(toy, reference, tmp_path):
    """A dict with key 25 fails in its worker process; the pool neither hangs nor loses the
    other images, and the error names the file in one line."""
    names, voc, cam_dir = toy
    bad = cam_dir / f"{names[3]}.npy"
    save_npy_dict(bad, {25: np.zeros((2, 2), np.float32)})
    with pytest.raises(UserError) as e:
        run(toy, tmp_path / "in_process", names=[names[3]])
    assert str(e.value) == f"{bad}: dict key 25 is not a class index 0..19"

    out = tmp_path / "ir"
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        run(toy, out, workers=2)
    assert time.monotonic() - start < 120
    assert str(e.value) == f"{bad}: dict key 25 is not a class index 0..19"
    got = pngs(out)
    assert sorted(got) == sorted(names[:3])
    assert all((got[n] == reference[n]).all() for n in got)  # processes = in-process

    save_npy_dict(cam_dir / f"{names[0]}.npy", {3: np.zeros((5, 5), np.float32)})
    (out / f"{names[0]}.png").unlink()
    with pytest.raises(UserError) as e:
        run(toy, out, workers=2)
    assert str(e.value).startswith("2 of 2 images failed (the others are written); the first: "
                                   f"{cam_dir / names[0]}.npy: map of class 3 is 5x5 but the "
                                   "image is ")
    assert "\n" not in str(e.value)


def _killed_run(toy, out_dir, marker):
    """In a forked child: label normally, but hang in the middle of writing the third PNG."""
    real = make_labels.save_label_png
    calls = []

    def save(label, path):
        calls.append(path)
        if len(calls) < 3:
            return real(label, path)

        def write(f):
            f.write(b"\x89PNG\r\n\x1a\n half a file")
            f.flush()
            Path(marker).touch()
            time.sleep(300)

        atomic_save(path, write)

    make_labels.save_label_png = save
    run(toy, out_dir)


def test_killed_run_leaves_no_partial_png(toy, reference, tmp_path):
    names = toy[0]
    out, marker = tmp_path / "ir", tmp_path / "writing"
    child = multiprocessing.get_context("fork").Process(target=_killed_run,
                                                        args=(toy, out, marker))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names[:2])
    temps = [p for p in out.iterdir() if TEMP_NAME.fullmatch(p.name)]
    assert len(temps) == 1 and temps[0].name.startswith(f".{names[2]}.png.")

    assert run(toy, out) == N - 2  # the killed run's lock is taken over, its temporary removed
    assert not [p for p in out.iterdir() if TEMP_NAME.fullmatch(p.name)]
    got = pngs(out)
    assert sorted(got) == sorted(names) and all((got[n] == reference[n]).all() for n in names)


def test_other_settings_are_refused_unless_overwrite(toy, tmp_path):
    out = tmp_path / "ir"
    run(toy, out, names=toy[0][:2])
    with pytest.raises(UserError) as e:
        run(toy, out, conf_fg=0.5)
    assert "holds IR labels of other settings (conf_fg 0.4 -> 0.5)" in str(e.value)
    assert "--overwrite" in str(e.value)
    assert run(toy, out, crf=False, overwrite=True) == N
    assert json.loads((out / ".provenance.json").read_text())["outputs"]["ir_label"]["crf"] \
        is None
    # labels without a record (another tool's) are refused too
    (out / ".provenance.json").unlink()
    with pytest.raises(UserError, match="record no settings"):
        run(toy, out, crf=False)
    with pytest.raises(UserError, match="must be above"):
        run(toy, tmp_path / "x", conf_fg=0.1, conf_bg=0.1)


def test_classes_absent_from_the_image_label_are_warned(toy, tmp_path, caplog):
    names = toy[0]
    labels = {n: np.zeros(20, np.float32) for n in names}  # no class at all
    with caplog.at_level(logging.WARNING, logger="plmix"):
        run(toy, tmp_path / "ir", names=names[:2], cls_labels=labels)
    assert "2 image(s) have CAM classes that their image-level label lacks" in caplog.text


def test_entry_point_with_the_irn_preset(toy, tiny_config, tmp_path):
    names, _, cam_dir = toy
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names[:3]) + "\n")
    out = tmp_path / "ir"
    argv = ["--config", str(tiny_config), "--cam_dir", str(cam_dir), "--ir_label_out_dir",
            str(out), "--train_list", str(lst), "--ir_label_workers", "0"]
    assert entry.main([*argv, "--irn_preset", "irn", "--conf_bg_thres", "0.02"]) == 3
    record = json.loads((out / ".provenance.json").read_text())["outputs"]["ir_label"]
    assert (record["conf_fg"], record["conf_bg"]) == (0.30, 0.02)  # the flag beats the preset
    with pytest.raises(UserError, match="other settings"):
        entry.main(argv)  # the default plmix thresholds differ from the folder's
    assert entry.main([*argv, "--overwrite", "--ir_crf", "False"]) == 3


def test_entry_point_with_coco_keys(toy, tiny_config, tmp_path):
    """``--num_classes 81``: CAM keys moved up by 60 (up to 79) give the labels of the VOC keys
    moved up by 60 (up to 80); under the default 21 the same dicts are refused."""
    names, _, cam_dir = toy
    shifted = tmp_path / "coco_cams"
    for n in names[:2]:
        cams = np.load(cam_dir / f"{n}.npy", allow_pickle=True).item()
        save_npy_dict(shifted / f"{n}.npy", {k + 60: v for k, v in cams.items()})
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names[:2]) + "\n")

    def main(cams: Path, out: Path, *extra: str) -> int:
        return entry.main(["--config", str(tiny_config), "--cam_dir", str(cams),
                           "--ir_label_out_dir", str(out), "--train_list", str(lst),
                           "--ir_label_workers", "0", *extra])

    assert main(cam_dir, tmp_path / "voc") == 2
    with pytest.raises(UserError, match=r"dict key 6\d is not a class index 0\.\.19"):
        main(shifted, tmp_path / "coco")
    assert main(shifted, tmp_path / "coco", "--num_classes", "81") == 2
    voc, coco = pngs(tmp_path / "voc"), pngs(tmp_path / "coco")
    assert sorted(coco) == sorted(names[:2])
    for n, label in coco.items():
        ref = voc[n]
        assert np.array_equal(label, np.where((ref > 0) & (ref < 255), ref + 60, ref))
        assert (label > 60).any() and (label < 255).any()
