"""Build the WSSS training files of MS COCO 2014: lists, cls_labels.npy, masks, JPEG links.

``python -m data.prepare_coco --coco_root DIR --out_dir DIR [--splits train,val] [--workers N]``

Reads ``<coco_root>/{train2014,val2014}/*.jpg`` and
``<coco_root>/annotations/instances_{train,val}2014.json`` (with pycocotools) and writes, in the
layout the VOC tools read (pass ``--out_dir`` where they take ``voc12_root``):

- ``ImageSets/Segmentation/{train,val}.txt``: image names (the file name without ``.jpg``,
  ``COCO_train2014_000000000009``), sorted;
- ``ImageSets/Segmentation/{train,val}_sub.txt``: fixed samples of those lists (1,464 train and
  1,449 val images: the sizes of VOC's seg train and val), sorted, for the per-epoch
  validation of stages 1 and 3, which would take hours over 82,081 or 40,137 images
  (``configs/coco14_effb3.yaml``; our choice: the release has no COCO run). The sample is
  ``numpy.random.default_rng(0)``'s choice without replacement from the sorted list: the
  same files on every machine;
- ``cls_labels.npy``: {name: float32 (80,) multi-hot} over the categories in sorted id order
  (:mod:`data.coco`), from the non-crowd annotations, for the listed images of every split of
  this run (run both splits at once, the default, for one file covering both);
- ``SegmentationClass/<name>.png``: uint8 (H, W) masks, 0 background, 1..80 the category's
  label, 255 crowd (ignored), VOC palette;
- ``JPEGImages/<name>.jpg``: symbolic links to the COCO JPEGs (absolute targets), so the
  pipeline's ``<voc12_root>/JPEGImages/<name>.jpg`` reads them without a copy.

Lists: an image is listed iff it has at least one non-crowd annotation. The others (no
annotation at all, or crowd regions only) have no image-level label to learn from; they are
left out of the list, ``cls_labels.npy`` and the masks, and their number is logged (that is
what brings the files' 82,783 / 40,504 images to the WSSS lists' 82,081 / 40,137; see
:mod:`data.coco` for what is and is not checked about these numbers). Counts other than the
standard ones are a warning (a subset, the toy COCO), never an error.

Masks, overlapping instances. COCO's instance masks overlap (a person on a couch: the couch's
polygon often runs under the person). Rule: the non-crowd instances are painted in DECREASING
pixel area (the area of the rasterised mask, ties: increasing annotation id, so the higher id
ends on top); each overwrites what is below. So where two instances overlap the smaller one
wins: the overlap is usually a small object in front of (or on) a larger one whose outline was
drawn around it, and the other order would erase small objects entirely. Then crowd regions
(``iscrowd: 1``, coarse RLE outlines of "many instances" of one class, possibly with background
in them) become 255, but only where no non-crowd instance painted a pixel: an instance's
outline is the more precise label. An annotation with an empty polygon list paints nothing.
Masks are rasterised with pycocotools exactly as ``COCO.annToMask`` does.

Order and safety: every input is read and checked before anything is written (a missing folder
or file, a truncated or malformed JSON, an annotation naming an unknown image or category, a
malformed segmentation, a missing JPEG: one ``error:`` line naming the file, exit 2, no output
folder made). Then the JPEG links and the masks (each atomic; existing ones are skipped, so a
rerun resumes), in ``--workers`` processes with a progress bar, and last ``cls_labels.npy`` and
the lists (rewritten only when their content changes): a list file means its masks are all there.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.coco import CATEGORIES, FILE_COUNTS, LABEL_OF_ID, NUM_FG, STANDARD_COUNTS
from data.prepare_voc import check_present
from data.voc import save_label_png
from tool.common.errors import UserError, cli_main
from tool.common.fileio import atomic_save, atomic_symlink
from tool.common.logs import setup_logging
from tool.common.workers import shutdown_pool, worker_pool

log = logging.getLogger("plmix")
SPLITS = ("train", "val")
SUBSET_SIZES = {"train": 1464, "val": 1449}  # <split>_sub.txt: VOC's seg train / val sizes
SEG = Path("ImageSets") / "Segmentation"

# One annotation as the mask writer needs it: (annotation id, label 1..80, iscrowd, segmentation)
Ann = tuple[int, int, bool, object]


@dataclass
class ImageRecord:
    name: str  # file name without ".jpg"
    file: Path  # the JPEG in <coco_root>/<split>2014/
    height: int
    width: int
    anns: list[Ann]

    @property
    def listed(self) -> bool:
        """At least one non-crowd annotation (module docstring: Lists)."""
        return any(not crowd for _, _, crowd, _ in self.anns)

    def cls_label(self) -> np.ndarray:
        """float32 (80,) multi-hot of the non-crowd annotations' categories."""
        vec = np.zeros(NUM_FG, np.float32)
        vec[[label - 1 for _, label, crowd, _ in self.anns if not crowd]] = 1.0
        return vec


def split_paths(coco_root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) of a split of the official 2014 layout."""
    return (coco_root / f"{split}2014",
            coco_root / "annotations" / f"instances_{split}2014.json")


def check_inputs(coco_root: Path, splits: Sequence[str]) -> None:
    for p in [coco_root, *(q for s in splits for q in split_paths(coco_root, s))]:
        if not p.exists():
            raise UserError(f"not found: {p} (--coco_root holds train2014/, val2014/ and "
                            "annotations/instances_{train,val}2014.json)")


def read_instances(path: Path):
    """``pycocotools.coco.COCO`` of an instances JSON; an unreadable file -> one UserError."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "loading annotations..." lines
            return COCO(str(path))
    except (ValueError, AssertionError) as e:  # JSONDecodeError, UnicodeDecodeError; not a dict
        raise UserError(f"cannot parse {path}: {str(e) or 'not a COCO annotation file'}"
                        ) from None
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a COCO instances file (bad entry: "
                        f"{type(e).__name__} {e})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def segmentation_problem(seg: object, height: int, width: int) -> str | None:
    """What is wrong with an annotation's ``segmentation`` (None: polygons or an RLE of the
    image's size)."""
    if isinstance(seg, list):
        for part in seg:
            if (not isinstance(part, list) or len(part) < 4 or len(part) % 2
                    or not all(isinstance(v, int | float) for v in part)):
                return "a polygon is not a list of x, y numbers"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or size != [height, width]:
            return f"RLE size {size} is not the image's [{height}, {width}]"
        if isinstance(counts, str) or (isinstance(counts, list) and all(map(_is_int, counts))):
            return None
        return "RLE counts are neither a string nor a list of integers"
    return f"segmentation is a {type(seg).__name__}, neither polygons nor RLE"


def load_split(coco_root: Path, split: str) -> list[ImageRecord]:
    """Read and check one split's instances JSON; every image of the file, in id order."""
    img_dir, path = split_paths(coco_root, split)
    coco = read_instances(path)
    cats = {c["id"]: c.get("name") for c in coco.dataset.get("categories", [])}
    if cats != dict(CATEGORIES):
        diff = sorted(set(cats.items()) ^ set(CATEGORIES), key=str)[:3]
        raise UserError(f"the categories of {path} are not COCO's 80 (differences: {diff})")
    records: dict[int, ImageRecord] = {}
    for img_id, img in sorted(coco.imgs.items()):
        file, h, w = img.get("file_name"), img.get("height"), img.get("width")
        if not (isinstance(file, str) and file.endswith(".jpg") and "/" not in file
                and _is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise UserError(f"image {img_id} of {path} needs a file_name <name>.jpg and positive "
                            f"integer height and width (has {file!r}, {h!r}, {w!r})")
        records[img_id] = ImageRecord(file[:-4], img_dir / file, h, w, [])
    for ann in coco.dataset.get("annotations", []):
        aid, img_id, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if img_id not in records:
            raise UserError(f"annotation {aid} of {path} is on image_id {img_id!r}, which is not "
                            "an image of the file")
        if cid not in cats:
            raise UserError(f"annotation {aid} of {path} has category_id {cid!r}, which is not a "
                            "category of the file")
        crowd = ann.get("iscrowd", 0)
        rec = records[img_id]
        bad = (f"iscrowd is {crowd!r}" if crowd not in (0, 1)
               else segmentation_problem(ann.get("segmentation"), rec.height, rec.width))
        if bad:
            raise UserError(f"annotation {aid} of {path}: {bad}")
        rec.anns.append((aid, LABEL_OF_ID[cid], bool(crowd), ann["segmentation"]))
    return list(records.values())


def instance_mask(seg: object, height: int, width: int) -> np.ndarray:
    """bool (H, W) mask of one segmentation (polygons, RLE, uncompressed RLE), rasterised as
    ``COCO.annToMask`` does; an empty polygon list is an empty mask."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(height: int, width: int, anns: Sequence[Ann]) -> np.ndarray:
    """uint8 (H, W) label map of an image's annotations by the overlap rule of the module
    docstring: non-crowd instances in decreasing area (ties: increasing id), then 255 on crowd
    pixels no instance covers."""
    out = np.zeros((height, width), np.uint8)
    inst = [(m, aid, label) for aid, label, crowd, seg in anns if not crowd
            for m in [instance_mask(seg, height, width)]]
    for m, _, label in sorted(inst, key=lambda t: (-int(t[0].sum()), t[1])):
        out[m] = label
    covered = np.zeros((height, width), bool)
    for m, _, _ in inst:
        covered |= m
    for _aid, _label, crowd, seg in anns:
        if crowd:
            out[instance_mask(seg, height, width) & ~covered] = 255
    return out


def _write_mask(job: tuple[Path, int, int, list[Ann]]) -> None:
    dst, height, width, anns = job
    save_label_png(semantic_mask(height, width, anns), dst)


def _done(jobs: list, workers: int, progress: bool) -> Iterator[None]:
    """Run ``_write_mask`` on every job, in this process (workers <= 1) or in ``workers``
    processes; yields once per finished mask. Pending jobs are cancelled on an exception.

    The workers (``tool.common.workers``) die with this process, even by SIGKILL; the masks are
    atomic, so a killed run loses nothing but time."""
    bar = tqdm(total=len(jobs), desc="COCO masks", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                _write_mask(job)
                bar.update()
                yield
            return
        ex = worker_pool(min(workers, len(jobs)))
        try:
            for fut in as_completed([ex.submit(_write_mask, job) for job in jobs]):
                try:
                    fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError("COCO masks: a worker process died (killed, e.g. out of "
                                       "memory?); finished masks are kept, rerun to continue "
                                       "(or with fewer workers)") from e
                bar.update()
                yield
        finally:
            shutdown_pool(ex)
    finally:
        bar.close()


def link_images(records: Sequence[ImageRecord], jpeg_dir: Path) -> int:
    """``jpeg_dir/<name>.jpg`` -> the COCO JPEG (absolute), for each record; a link already
    pointing there, or a regular file (a copy), is kept. Returns how many links were made."""
    made = 0
    for rec in records:
        dst, target = jpeg_dir / f"{rec.name}.jpg", str(rec.file.resolve())
        if os.path.islink(dst) and os.readlink(dst) == target:
            continue
        if os.path.exists(dst) and not os.path.islink(dst):
            continue
        atomic_symlink(target, dst)
        made += 1
    return made


def _save_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_save(path, lambda f: f.write(data))
    return True


def _check_counts(split: str, in_file: int, listed: int) -> None:
    if in_file != FILE_COUNTS[split] or listed != STANDARD_COUNTS[split]:
        log.warning("%s: %d images in the file, %d listed; the official 2014 file has %d and "
                    "the WSSS list %d (fine for a subset)", split, in_file, listed,
                    FILE_COUNTS[split], STANDARD_COUNTS[split])


def subset(names: Sequence[str], split: str) -> list[str]:
    """The fixed sample of a sorted list for ``<split>_sub.txt`` (module docstring)."""
    k = min(SUBSET_SIZES[split], len(names))
    pick = np.random.default_rng(0).choice(len(names), size=k, replace=False)
    return [names[i] for i in sorted(pick)]


def prepare_coco(coco_root: str | os.PathLike, out_dir: str | os.PathLike,
                 splits: Sequence[str] = SPLITS, workers: int = 0,
                 progress: bool = True) -> dict:
    """Write the files of the module docstring for ``splits``; returns a summary dict: per
    split ``images`` (in the file), ``listed``, ``left_out`` (no non-crowd annotation) and
    ``no_annotation`` (none at all); ``masks_written``, ``links_made``, ``files_written``
    (of cls_labels.npy and the lists)."""
    coco_root, out = Path(coco_root), Path(out_dir)
    splits = list(dict.fromkeys(splits))
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UserError(f"--splits: {bad or splits} is not a subset of {', '.join(SPLITS)}")
    check_inputs(coco_root, splits)
    records = {s: load_split(coco_root, s) for s in splits}
    seen: dict[str, str] = {}
    for s in splits:
        for rec in records[s]:
            if rec.name in seen:
                raise UserError(f"image {rec.name} is in both {seen[rec.name]} and {s}")
            seen[rec.name] = s
    listed = {s: [r for r in records[s] if r.listed] for s in splits}
    for s in splits:
        check_present(split_paths(coco_root, s)[0], [r.name for r in listed[s]], ".jpg", "JPEG")

    summary: dict = {}
    for s in splits:
        left = [r for r in records[s] if not r.listed]
        summary[s] = {"images": len(records[s]), "listed": len(listed[s]),
                      "left_out": len(left), "no_annotation": sum(not r.anns for r in left)}
        log.info("%s: %d images, %d listed; %d left out without a non-crowd annotation (%d "
                 "without any annotation)%s", s, len(records[s]), len(listed[s]), len(left),
                 summary[s]["no_annotation"],
                 f", e.g. {left[0].name}" if left else "")
        _check_counts(s, len(records[s]), len(listed[s]))
    every = sorted((r for s in splits for r in listed[s]), key=lambda r: r.name)
    summary["links_made"] = link_images(every, out / "JPEGImages")
    masks = out / "SegmentationClass"
    jobs = [(masks / f"{r.name}.png", r.height, r.width, r.anns) for r in every
            if not (masks / f"{r.name}.png").exists()]  # atomic: an existing mask is finished
    summary["masks_written"] = sum(1 for _ in _done(jobs, workers, progress))
    buf = io.BytesIO()
    np.save(buf, {r.name: r.cls_label() for r in every})
    written = [_save_if_changed(out / "cls_labels.npy", buf.getvalue())]
    for s in splits:
        names = sorted(r.name for r in listed[s])
        for file, chosen in ((f"{s}.txt", names), (f"{s}_sub.txt", subset(names, s))):
            text = "".join(f"{n}\n" for n in chosen)
            written.append(_save_if_changed(out / SEG / file, text.encode()))
    summary["files_written"] = sum(written)
    log.info("wrote %s: %d masks (%d new), %d JPEG links (%d new), cls_labels.npy and %s lists "
             "(%d files changed)", out, len(every), summary["masks_written"], len(every),
             summary["links_made"], "/".join(splits), summary["files_written"])
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco_root", required=True, type=Path,
                   help="holds train2014/, val2014/ and annotations/")
    p.add_argument("--out_dir", required=True, type=Path,
                   help="where the lists, cls_labels.npy, masks and JPEG links go")
    p.add_argument("--splits", default="train,val", help="comma-separated, of train,val")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="mask-writing processes (0 or 1: this process)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    setup_logging()
    return prepare_coco(a.coco_root, a.out_dir, [s.strip() for s in a.splits.split(",")],
                        a.workers, not a.no_progress)


if __name__ == "__main__":
    cli_main(main)
