"""data.prepare_voc on a hand-made miniature VOC2012 devkit + SBD ``dataset/`` folder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from data import prepare_voc
from data.voc import CLASS_NAMES, load_mask, save_label_png
from tool.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
# name -> (width, height, [(class, difficult), ...]); 2007_000009 is annotated but listed nowhere
IMAGES = {
    "2007_000001": (8, 6, [("dog", 0), ("person", 0), ("dog", 1)]),  # repeated + difficult
    "2007_000002": (6, 6, [("aeroplane", 0)]),
    "2007_000003": (7, 5, [("tvmonitor", 1), ("diningtable", 0)]),
    "2007_000004": (5, 7, [("cat", 0)]),
    "2008_000010": (9, 4, [("bus", 0), ("car", 0), ("car", 0)]),
    "2008_000011": (4, 9, [("pottedplant", 0), ("person", 1)]),
    "2007_000009": (5, 5, [("sheep", 0)]),
}
VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002"], ["2007_000003", "2007_000004"]
SBD_TRAIN = ["2008_000010", "2007_000003", "2007_000001"]  # overlaps VOC val and VOC train
SBD_VAL = ["2008_000011", "2007_000004"]
VOC_PNGS = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
SBD_MATS = ["2008_000010", "2008_000011", "2007_000001", "2007_000003", "2007_000004"]
TRAIN_AUG = ["2007_000001", "2007_000002", "2008_000010", "2008_000011"]


def xml_text(objects: list[tuple[str, int]]) -> str:
    objs = "".join(f"<object><name>{c}</name><difficult>{d}</difficult>"
                   "<part><name>head</name></part></object>" for c, d in objects)
    return f"<annotation><folder>VOC2012</folder><size><depth>3</depth></size>{objs}</annotation>"


def fake_mask(name: str, w: int, h: int, salt: int) -> np.ndarray:
    """A distinct deterministic label map per (name, source)."""
    return ((np.arange(h * w).reshape(h, w) + int(name[-2:]) + salt) % 21).astype(np.uint8)


def write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """SBD's layout: a struct GTcls with Segmentation, Boundaries (cell of sparse), Categories."""
    bounds = np.empty((20, 1), dtype=object)
    for i in range(20):
        bounds[i, 0] = scipy.sparse.csc_matrix(seg == i + 1, dtype=float)
    cats = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": bounds,
                                      "CategoriesPresent": cats}})


def write_list(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


@pytest.fixture
def devkit(tmp_path: Path) -> tuple[Path, Path]:
    voc, sbd = tmp_path / "VOC2012", tmp_path / "dataset"
    for d in ("Annotations", "JPEGImages", "SegmentationClass"):
        (voc / d).mkdir(parents=True)
    (sbd / "cls").mkdir(parents=True)
    for name, (w, h, objects) in IMAGES.items():
        (voc / "Annotations" / f"{name}.xml").write_text(xml_text(objects))
        Image.new("RGB", (w, h), (90, 120, 30)).save(voc / "JPEGImages" / f"{name}.jpg")
        if name in VOC_PNGS:
            save_label_png(fake_mask(name, w, h, 0), voc / "SegmentationClass" / f"{name}.png")
        if name in SBD_MATS:
            write_sbd_mat(sbd / "cls" / f"{name}.mat", fake_mask(name, w, h, 7))
    write_list(voc / "ImageSets/Segmentation/train.txt", VOC_TRAIN)
    write_list(voc / "ImageSets/Segmentation/val.txt", VOC_VAL)
    write_list(sbd / "train.txt", SBD_TRAIN)
    write_list(sbd / "val.txt", SBD_VAL)
    return voc, sbd


def run(voc: Path, sbd: Path, out: Path, *extra: str) -> dict:
    return prepare_voc.main(["--voc12_root", str(voc), "--sbd_root", str(sbd),
                             "--out_dir", str(out), *extra])


def multi_hot(*classes: str) -> list[float]:
    return [float(c in classes) for c in CLASS_NAMES]


def test_read_xml_labels_counts_every_object_once(devkit):
    voc, _ = devkit
    labels = prepare_voc.read_xml_labels(voc / "Annotations/2007_000001.xml")
    assert labels == {CLASS_NAMES.index("dog"), CLASS_NAMES.index("person")}  # no "head" part


def test_lists_labels_and_count_warning(devkit, tmp_path, capsys):
    voc, sbd = devkit
    out = tmp_path / "out"
    summary = run(voc, sbd, out)
    assert (out / "train_aug.txt").read_text().split() == TRAIN_AUG
    assert (out / "train.txt").read_text().split() == VOC_TRAIN
    assert (out / "val.txt").read_text().split() == VOC_VAL
    labels = np.load(out / "cls_labels.npy", allow_pickle=True).item()
    expected = {
        "2007_000001": multi_hot("dog", "person"), "2007_000002": multi_hot("aeroplane"),
        "2007_000003": multi_hot("tvmonitor", "diningtable"), "2007_000004": multi_hot("cat"),
        "2008_000010": multi_hot("bus", "car"), "2008_000011": multi_hot("pottedplant", "person"),
    }
    assert sorted(labels) == sorted(expected)
    for name, vec in labels.items():
        assert vec.dtype == np.float32 and vec.shape == (20,)
        assert vec.tolist() == expected[name], name
    assert summary == {"train_aug": 4, "train": 2, "val": 2, "cls_labels": 6}
    err = capsys.readouterr().err
    assert "WARNING: train_aug has 4 images, the standard VOC+SBD set has 10582" in err
    assert "WARNING: cls_labels has 6 images" in err
    assert not (out / "SegmentationClassAug").exists()


def test_aug_masks_prefer_voc_png_then_sbd_mat_and_resume(devkit, tmp_path, capsys):
    voc, sbd = devkit
    out = tmp_path / "out"
    assert run(voc, sbd, out, "--aug_masks")["aug_masks_written"] == 4
    aug = out / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == TRAIN_AUG
    for name in TRAIN_AUG:
        w, h, _ = IMAGES[name]
        salt = 0 if name in VOC_PNGS else 7  # 2007_000001 has both: the VOC PNG wins
        np.testing.assert_array_equal(load_mask(aug / f"{name}.png"), fake_mask(name, w, h, salt))
        assert Image.open(aug / f"{name}.png").mode == "P"
    assert "SegmentationClassAug 4/4 (4 written)" in capsys.readouterr().out
    (aug / "2008_000010.png").unlink()
    assert run(voc, sbd, out, "--aug_masks")["aug_masks_written"] == 1  # the others are skipped


def break_missing_folder(voc: Path, sbd: Path) -> None:
    (voc / "Annotations").rename(voc / "Annotations_old")


def break_missing_xml(voc: Path, sbd: Path) -> None:
    (voc / "Annotations/2008_000011.xml").unlink()


def break_unknown_class(voc: Path, sbd: Path) -> None:
    (voc / "Annotations/2007_000002.xml").write_text(xml_text([("aeroplane", 0), ("unicorn", 0)]))


def break_missing_jpeg(voc: Path, sbd: Path) -> None:
    (voc / "JPEGImages/2008_000010.jpg").unlink()
    (voc / "JPEGImages/2007_000002.jpg").unlink()


def break_missing_sbd_cls(voc: Path, sbd: Path) -> None:
    (sbd / "cls").rename(sbd / "cls_old")


def break_mask_size(voc: Path, sbd: Path) -> None:
    write_sbd_mat(sbd / "cls/2008_000011.mat", np.zeros((3, 3), np.uint8))


def break_mat_layout(voc: Path, sbd: Path) -> None:
    scipy.io.savemat(sbd / "cls/2008_000010.mat", {"GTinst": {"Segmentation": np.zeros((4, 9))}})


@pytest.mark.parametrize("breaker, message", [
    (break_missing_folder, "not found: {voc}/Annotations"),
    (break_missing_xml, "1 listed images have no annotation in {voc}/Annotations: 2008_000011"),
    (break_unknown_class, "unknown class 'unicorn' in annotation {voc}/Annotations/2007_000002"),
    (break_missing_jpeg, "2 listed images have no JPEG in {voc}/JPEGImages: 2007_000002, 2008_"),
    (break_missing_sbd_cls, "not found: {sbd}/cls"),
    (break_mask_size, "mask {sbd}/cls/2008_000011.mat is 3x3 but image 2008_000011 is 4x9"),
    (break_mat_layout, "{sbd}/cls/2008_000010.mat has no 2-D GTcls.Segmentation label map"),
])
def test_broken_input_gives_one_clear_line(devkit, tmp_path, breaker, message):
    voc, sbd = devkit
    breaker(voc, sbd)
    with pytest.raises(UserError) as e:
        run(voc, sbd, tmp_path / "out", "--aug_masks")
    assert "\n" not in str(e.value)
    assert message.format(voc=voc, sbd=sbd) in str(e.value)


def test_cli_exit_code_and_stderr(devkit, tmp_path):
    voc, sbd = devkit
    break_missing_xml(voc, sbd)
    r = subprocess.run([sys.executable, "-m", "data.prepare_voc", "--voc12_root", str(voc),
                        "--sbd_root", str(sbd), "--out_dir", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: 1 listed images have no annotation in {voc}/Annotations: 2008_000011"]
    assert not (tmp_path / "out").exists()  # checks run before anything is written
