"""data.prepare_coco end to end on the toy COCO (data.toy_coco): lists, cls_labels.npy and masks
checked against what the test computes itself from the JSON with pycocotools' ``annToMask``;
resume; workers; bad input (one clear error, nothing written)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from data import coco as coco_def
from data import prepare_coco, toy_coco
from data.voc import load_cls_labels, load_img_name_list, load_mask
from tool.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SEG = Path("ImageSets") / "Segmentation"
SPLITS = ("train", "val")


def ann_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2014.json"


def load_coco(root: Path, split: str) -> COCO:
    return COCO(str(ann_file(root, split)))


def expected(c: COCO) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """name -> (mask or None when the image is not listed, (80,) label), from the JSON alone:
    non-crowd instances painted in decreasing annToMask area (ties: increasing id), then 255
    on crowd pixels outside every instance."""
    ids = sorted(c.getCatIds())
    assert len(ids) == 80
    out = {}
    for img in c.loadImgs(c.getImgIds()):
        anns = c.loadAnns(c.getAnnIds(imgIds=[img["id"]]))
        inst = [(c.annToMask(a).astype(bool), a) for a in anns if not a["iscrowd"]]
        label = np.zeros(80, np.float32)
        for _, a in inst:
            label[ids.index(a["category_id"])] = 1
        mask = None
        if inst:
            mask = np.zeros((img["height"], img["width"]), np.uint8)
            for m, a in sorted(inst, key=lambda t: (-t[0].sum(), t[1]["id"])):
                mask[m] = ids.index(a["category_id"]) + 1
            covered = np.any([m for m, _ in inst], axis=0)
            for a in anns:
                if a["iscrowd"]:
                    mask[(c.annToMask(a) > 0) & ~covered] = 255
        out[img["file_name"][:-4]] = (mask, label)
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco"
    toy_coco.generate(root, seed=5)
    return root


@pytest.fixture(scope="module")
def prepared(toy: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "out"
    return out, prepare_coco.prepare_coco(toy, out, progress=False)


def test_coco_categories():
    assert len(coco_def.CATEGORY_IDS) == 80 == len(set(coco_def.CLASS_NAMES))
    assert list(coco_def.CATEGORY_IDS) == sorted(coco_def.CATEGORY_IDS)
    assert coco_def.LABEL_OF_ID[1] == 1 and coco_def.LABEL_OF_ID[90] == 80
    assert coco_def.supercategory(90) == "indoor" and coco_def.supercategory(18) == "animal"
    pal = np.array(coco_def.coco_palette()).reshape(256, 3)
    assert len({tuple(p) for p in pal[[*range(81), 255]]}) == 82  # distinct colours


def test_toy_holds_every_case(toy: Path):
    c = load_coco(toy, "train")
    anns = c.dataset["annotations"]
    assert [(k["id"], k["name"]) for k in c.dataset["categories"]] == list(coco_def.CATEGORIES)
    segs = [a["segmentation"] for a in anns]
    assert any(isinstance(s, list) and len(s) > 1 for s in segs)  # a multi-part polygon
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert any(not c.getAnnIds(imgIds=[i]) for i in c.getImgIds())  # an image without any
    overlap = False
    for i in c.getImgIds():
        inst = [a for a in c.loadAnns(c.getAnnIds(imgIds=[i])) if not a["iscrowd"]]
        for k, a in enumerate(inst):
            for b in inst[k + 1:]:
                if a["category_id"] != b["category_id"]:
                    overlap |= bool((c.annToMask(a) & c.annToMask(b)).any())
    assert overlap
    for a in anns:  # area and bbox are pycocotools' own
        assert a["area"] == pytest.approx(float(c.annToMask(a).sum()))
    first = toy.parent / "again"
    toy_coco.generate(first, seed=5)
    for split in SPLITS:
        assert ann_file(first, split).read_bytes() == ann_file(toy, split).read_bytes()


def test_lists_labels_masks_match_the_json(toy: Path, prepared):
    out, summary = prepared
    labels = load_cls_labels(out / "cls_labels.npy")
    all_listed = []
    for split in SPLITS:
        exp = expected(load_coco(toy, split))
        listed = sorted(n for n, (m, _) in exp.items() if m is not None)
        assert load_img_name_list(out / SEG / f"{split}.txt") == listed
        # the toy lists are shorter than the samples' sizes: the samples are the whole lists
        assert load_img_name_list(out / SEG / f"{split}_sub.txt") == listed
        assert summary[split] == {"images": len(exp), "listed": len(listed),
                                  "left_out": len(exp) - len(listed),
                                  "no_annotation": summary[split]["no_annotation"]}
        for name in listed:
            mask = load_mask(out / "SegmentationClass" / f"{name}.png")
            np.testing.assert_array_equal(mask, exp[name][0], err_msg=name)
            assert labels[name].dtype == np.float32 and labels[name].shape == (80,)
            np.testing.assert_array_equal(labels[name], exp[name][1])
            link = out / "JPEGImages" / f"{name}.jpg"
            assert link.is_symlink()
            assert link.resolve() == (toy / f"{split}2014" / f"{name}.jpg").resolve()
        all_listed += listed
    assert sorted(labels) == sorted(all_listed)
    assert sorted(p.stem for p in (out / "SegmentationClass").iterdir()) == sorted(all_listed)
    # the cases the rule is about did occur: crowd 255; both overlapping instances visible
    masks = [load_mask(out / "SegmentationClass" / f"{n}.png") for n in all_listed]
    assert any((m == 255).any() for m in masks)
    overlap = load_mask(out / "SegmentationClass" / "COCO_train2014_000000000001.png")
    assert len(set(np.unique(overlap).tolist()) - {0, 255}) == 2


def test_left_out_images_reported(toy: Path, prepared, caplog):
    out, summary = prepared
    train = load_img_name_list(out / SEG / "train.txt")
    assert "COCO_train2014_000000000002" not in train  # no annotation
    assert "COCO_train2014_000000000004" not in train  # crowd regions only
    assert summary["train"]["left_out"] == 2 and summary["train"]["no_annotation"] == 1
    assert summary["val"]["left_out"] == 1 and summary["val"]["no_annotation"] == 1
    assert "COCO_val2014_000000100001" not in load_img_name_list(out / SEG / "val.txt")
    with caplog.at_level(logging.INFO, logger="plmix"):
        prepare_coco.prepare_coco(toy, out, progress=False)
    text = caplog.text
    assert "2 left out without a non-crowd annotation (1 without any annotation)" in text
    assert "the WSSS list 82081 (fine for a subset)" in text
    assert all(r.levelno == logging.WARNING for r in caplog.records if "WSSS" in r.message)


def _stamps(out: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for p in out.rglob("*")}


def test_resume(toy: Path, prepared):
    out, _ = prepared
    before = _stamps(out)
    again = prepare_coco.prepare_coco(toy, out, progress=False)
    assert (again["masks_written"], again["links_made"], again["files_written"]) == (0, 0, 0)
    assert _stamps(out) == before
    victim = out / "SegmentationClass" / "COCO_train2014_000000000001.png"
    data = victim.read_bytes()
    victim.unlink()
    (out / "JPEGImages" / "COCO_val2014_000000100002.jpg").unlink()
    third = prepare_coco.prepare_coco(toy, out, progress=False)
    assert (third["masks_written"], third["links_made"], third["files_written"]) == (1, 1, 0)
    assert victim.read_bytes() == data


def test_workers_write_the_same_masks(toy: Path, prepared, tmp_path: Path):
    out, _ = prepared
    prepare_coco.prepare_coco(toy, tmp_path / "w2", workers=2, progress=False)
    ref = sorted((out / "SegmentationClass").iterdir())
    assert [p.name for p in ref] == sorted(p.name for p in (tmp_path / "w2" /
                                                           "SegmentationClass").iterdir())
    for p in ref:
        assert (tmp_path / "w2" / "SegmentationClass" / p.name).read_bytes() == p.read_bytes()


def _edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def _unknown_image(d: dict) -> None:
    d["annotations"][3]["image_id"] = 777777


def _unknown_category(d: dict) -> None:
    d["annotations"][1]["category_id"] = 12  # a gap in COCO's ids


BAD = {
    "missing folder": (lambda r: shutil.rmtree(r / "val2014"), "val2014"),
    "missing file": (lambda r: ann_file(r, "train").unlink(), "instances_train2014.json"),
    "truncated json": (lambda r: ann_file(r, "val").write_bytes(
        ann_file(r, "val").read_bytes()[:500]), "cannot parse"),
    "unknown image": (lambda r: _edit_json(ann_file(r, "train"), _unknown_image),
                      "image_id 777777"),
    "unknown category": (lambda r: _edit_json(ann_file(r, "val"), _unknown_category),
                         "category_id 12"),
    "missing jpeg": (lambda r: (r / "train2014" / "COCO_train2014_000000000005.jpg").unlink(),
                     "COCO_train2014_000000000005"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_and_writes_nothing(toy: Path, tmp_path: Path, case: str):
    root = tmp_path / "coco"
    shutil.copytree(toy, root)
    spoil, words = BAD[case]
    spoil(root)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        prepare_coco.prepare_coco(root, out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and words in msg
    if case not in ("missing folder", "missing jpeg"):
        assert "instances_" in msg  # the file is named
    assert not out.exists()


def test_cli_error_line(toy: Path, tmp_path: Path):
    root = tmp_path / "coco"
    shutil.copytree(toy, root)
    ann_file(root, "train").write_text('{"images": [')
    r = subprocess.run([sys.executable, "-m", "data.prepare_coco", "--coco_root", str(root),
                        "--out_dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: cannot parse {ann_file(root, 'train')}: "
        "Expecting value: line 1 column 13 (char 12)"]
    assert not (tmp_path / "out").exists()


def test_subset_is_a_fixed_sorted_sample():
    from data.prepare_coco import SUBSET_SIZES, subset

    names = [f"n{i:05d}" for i in range(3000)]
    sub = subset(names, "train")
    assert len(sub) == SUBSET_SIZES["train"] == 1464 and len(set(sub)) == 1464
    assert sub == sorted(sub) and set(sub) <= set(names) and sub == subset(names, "train")
    assert sub[:3] != names[:3]  # a sample, not the head of the list

