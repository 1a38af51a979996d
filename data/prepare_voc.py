"""Build the VOC 2012 + SBD training files: cls_labels.npy, train_aug/train/val lists, masks.

Writes ``cls_labels.npy``, ``{train_aug,train,val}.txt`` and, with ``--aug_masks``,
``SegmentationClassAug/``.

``python -m data.prepare_voc --voc12_root VOC2012 --sbd_root SBD/dataset --out_dir data
[--aug_masks]``. Lists, annotations and JPEGs are all checked before anything is written;
masks as they are converted (METHOD.md 1.1, 1.2).
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from data.voc import CLASS_NAMES, load_img_name_list, load_mask, save_label_png
from tool.common.errors import UserError, cli_main
from tool.common.fileio import save_npy_dict, save_text

STANDARD_COUNTS = {"train_aug": 10582, "train": 1464, "val": 1449, "cls_labels": 12031}
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}
SHOW = 5  # how many offending names an error lists


def read_xml_labels(path: Path) -> set[int]:
    """The VOC class indices of every ``<object>`` in an annotation (difficult ones included)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise UserError(f"annotation not found: {path}") from None
    except ET.ParseError as e:
        raise UserError(f"cannot parse annotation {path}: {e}") from None
    labels = set()
    for obj in root.findall("object"):  # direct children only: <part><name> (head, hand) is not
        name = (obj.findtext("name") or "").strip()  # a class
        if name not in CLASS_INDEX:
            raise UserError(f"unknown class {name!r} in annotation {path}")
        labels.add(CLASS_INDEX[name])
    return labels


def build_cls_labels(voc12_root: Path, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        vec = np.zeros(len(CLASS_NAMES), np.float32)
        vec[sorted(read_xml_labels(voc12_root / "Annotations" / f"{name}.xml"))] = 1.0
        out[name] = vec
    return out


def build_lists(voc12_root: Path, sbd_root: Path) -> dict[str, list[str]]:
    """VOC seg train/val, and train_aug = (SBD train + SBD val + VOC train) - VOC val, sorted."""
    seg = voc12_root / "ImageSets" / "Segmentation"
    train, val = load_img_name_list(seg / "train.txt"), load_img_name_list(seg / "val.txt")
    sbd = load_img_name_list(sbd_root / "train.txt") + load_img_name_list(sbd_root / "val.txt")
    return {"train_aug": sorted(set(sbd + train) - set(val)), "train": train, "val": val}


def check_inputs(voc12_root: Path, sbd_root: Path, aug_masks: bool) -> None:
    required = [voc12_root, voc12_root / "Annotations", voc12_root / "JPEGImages",
                voc12_root / "ImageSets/Segmentation/train.txt",
                voc12_root / "ImageSets/Segmentation/val.txt",
                sbd_root, sbd_root / "train.txt", sbd_root / "val.txt"]
    if aug_masks:
        required.append(sbd_root / "cls")
    for p in required:
        if not p.exists():
            raise UserError(f"not found: {p} (--voc12_root is VOC2012/, --sbd_root is SBD's "
                            "dataset/ folder)")


def check_present(folder: Path, names: list[str], ext: str, what: str) -> None:
    """Every ``folder/<name><ext>`` exists; else one error with the count and the first few."""
    missing = [n for n in names if not (folder / f"{n}{ext}").is_file()]
    if missing:
        first = ", ".join(missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
        raise UserError(f"{len(missing)} listed images have no {what} in {folder}: {first}")


def check_counts(counts: dict[str, int]) -> None:
    """A non-standard count is fine for a subset, but it is worth a visible warning."""
    for key, n in counts.items():
        if n != STANDARD_COUNTS[key]:
            print(f"WARNING: {key} has {n} images, the standard VOC+SBD set has "
                  f"{STANDARD_COUNTS[key]} (fine for a subset)", file=sys.stderr)


def _unwrap(x: object) -> object:
    """loadmat wraps structs and cells in 1x1 object arrays, sometimes several deep (no squeeze_me:
    it would also squeeze a 1-pixel-high mask)."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.item()
    return x


def read_sbd_mask(path: Path) -> np.ndarray:
    """The (H, W) uint8 class mask ``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file."""
    from scipy.io import loadmat  # only needed with --aug_masks
    from scipy.io.matlab import MatReadError

    try:
        gt = _unwrap(loadmat(path, struct_as_record=False).get("GTcls"))
    except (OSError, ValueError, TypeError, MatReadError) as e:
        raise UserError(f"cannot read SBD mask {path}: {e}") from None
    seg = np.asarray(_unwrap(getattr(gt, "Segmentation", None)))
    if seg.ndim != 2 or seg.dtype.kind not in "iubf" or seg.size == 0:
        raise UserError(f"{path} has no 2-D GTcls.Segmentation label map")
    if seg.max() > 255 or seg.min() < 0 or not np.array_equal(seg, np.round(seg)):
        raise UserError(f"{path}: GTcls.Segmentation values are not integers in 0..255")
    return seg.astype(np.uint8)


def aug_mask(voc12_root: Path, sbd_root: Path, name: str) -> np.ndarray:
    """VOC's own SegmentationClass PNG when there is one (it has the 255 border), else SBD's."""
    png = voc12_root / "SegmentationClass" / f"{name}.png"
    src = png if png.is_file() else sbd_root / "cls" / f"{name}.mat"
    if not src.is_file():
        raise UserError(f"image {name} has neither {png} nor {src}")
    mask = load_mask(src) if src == png else read_sbd_mask(src)
    with Image.open(voc12_root / "JPEGImages" / f"{name}.jpg") as im:
        w, h = im.size  # header only: cheap
    if mask.shape != (h, w):
        raise UserError(f"mask {src} is {mask.shape[1]}x{mask.shape[0]} but image {name} "
                        f"is {w}x{h}")
    return mask


def write_aug_masks(voc12_root: Path, sbd_root: Path, names: list[str], out: Path) -> int:
    """Write ``out/<name>.png`` for each name, skipping finished ones; returns how many written."""
    written = 0
    for i, name in enumerate(names, 1):
        dst = out / f"{name}.png"
        if not dst.exists():  # atomic writes: an existing file is a finished one
            save_label_png(aug_mask(voc12_root, sbd_root, name), dst)
            written += 1
        if i % 500 == 0 or i == len(names):
            print(f"  SegmentationClassAug {i}/{len(names)} ({written} written)", flush=True)
    return written


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc12_root", required=True, type=Path, help="the devkit's VOC2012/ folder")
    p.add_argument("--sbd_root", required=True, type=Path, help="SBD's dataset/ folder")
    p.add_argument("--out_dir", default=Path("data"), type=Path)
    p.add_argument("--aug_masks", action="store_true", help="also write SegmentationClassAug/")
    a = p.parse_args(argv)
    voc, sbd, out = a.voc12_root, a.sbd_root, a.out_dir
    check_inputs(voc, sbd, a.aug_masks)
    lists = build_lists(voc, sbd)
    every = sorted(set(lists["train_aug"]) | set(lists["train"]) | set(lists["val"]))
    check_present(voc / "Annotations", every, ".xml", "annotation")
    check_present(voc / "JPEGImages", every, ".jpg", "JPEG")
    labels = build_cls_labels(voc, every)
    check_counts({**{k: len(v) for k, v in lists.items()}, "cls_labels": len(labels)})
    save_npy_dict(out / "cls_labels.npy", labels)
    for key, names in lists.items():
        save_text(out / f"{key}.txt", "".join(f"{n}\n" for n in names))
    summary = {k: len(v) for k, v in lists.items()} | {"cls_labels": len(labels)}
    print(f"wrote {out / 'cls_labels.npy'} ({len(labels)} images)")
    for key, names in lists.items():
        print(f"wrote {out / (key + '.txt')} ({len(names)} images)")
    if a.aug_masks:
        masks = out / "SegmentationClassAug"
        summary["aug_masks_written"] = write_aug_masks(voc, sbd, lists["train_aug"], masks)
        print(f"wrote {masks}/ ({len(lists['train_aug'])} masks, "
              f"{summary['aug_masks_written']} new)")
    return summary


if __name__ == "__main__":
    cli_main(main)
