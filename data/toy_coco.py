"""Built-in toy MS COCO 2014: a few synthetic images in the official 2014 layout.

``python -m data.toy_coco --out DIR --seed N [--n-train 12] [--n-val 6]`` writes
``train2014/`` and ``val2014/`` JPEGs (64-96 px a side, ``COCO_<split>2014_<id:012d>.jpg``) and
``annotations/instances_{train,val}2014.json`` in the official format (``info``, ``licenses``,
``images``, ``annotations`` with ``segmentation``, ``area``, ``bbox``, ``iscrowd``, and the 80
official ``categories``), so ``data.prepare_coco`` runs on it unchanged.

What it holds, for the cases ``prepare_coco`` must handle (the first images of each split):

- train 0, val 1: two overlapping instances of different categories (a large one, polygons of
  several parts, and a smaller RLE one on it);
- train 1, val 0: an image without annotations;
- train 2: a crowd region (``iscrowd: 1``, uncompressed RLE as in the official files: counts a
  list) over part of a non-crowd instance;
- train 3: crowd regions only;
- every other image: 1-3 instances of random distinct categories at random places (they may
  overlap). Instances are polygons (the toy VOC shapes of :mod:`data.toy_voc`; shapes of
  several parts give several polygons), or, for about a third of them and for the shapes with
  holes, compressed RLE (``pycocotools.mask.encode``, counts a str).

``area`` and ``bbox`` are pycocotools' for the segmentation. Objects are drawn on the toy VOC
backgrounds with the toy VOC textures (category k wears VOC class ``(k - 1) % 20 + 1``'s),
exactly on their annotation's rasterised mask: crowd regions first, then instances, larger
ones first (``prepare_coco``'s overlap rule). Each image draws from its own
``Generator(PCG64([seed, split, index]))``: the output is identical for a given seed.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data import toy_voc
from data.coco import CATEGORIES, CATEGORY_IDS, LABEL_OF_ID, supercategory
from tool.common.errors import UserError, cli_main
from tool.common.fileio import atomic_save

SPLIT_CODE = {"train": 0, "val": 1}
FIRST_ID = {"train": 1, "val": 100001}  # image ids, distinct across the splits as in COCO
SIZE_RANGE = (64, 96)
SPECIAL = {"train": ("overlap", "empty", "crowd", "crowd_only"), "val": ("empty", "overlap")}
POLYGON_SHAPES = tuple(k for k, layers in toy_voc.SHAPES.items() if all(v for _, v in layers))
RLE_SHAPE_SHARE = 1 / 3
MULTI_PART = tuple(k for k in POLYGON_SHAPES if len(toy_voc.SHAPES[k]) > 1)  # dumbbell, boat


def _placed(shape: str, centre, size: float, angle: float) -> list[np.ndarray]:
    """The fill polygons of a toy VOC shape, placed as :func:`data.toy_voc.shape_mask` does."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * size
    return [poly @ rot.T + centre for poly, _ in toy_voc.SHAPES[shape]]


def _rle_str(mask: np.ndarray) -> dict:
    """Compressed RLE of a bool (H, W) mask, counts as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rle_list(mask: np.ndarray) -> dict:
    """Uncompressed RLE (official crowd form): run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _instance(rng: np.random.Generator, hw: tuple[int, int], cat: int, size: float,
              centre=None, encoding: str | None = None, shapes: tuple[str, ...] = ()) -> dict:
    """One non-crowd instance: ``{"category_id", "segmentation"}`` of a random toy VOC shape
    (of ``shapes`` when given)."""
    from pycocotools import mask as mask_utils

    h, w = hw
    if encoding is None:
        encoding = "rle" if rng.random() < RLE_SHAPE_SHARE else "polygon"
    shapes = shapes or (POLYGON_SHAPES if encoding == "polygon" else tuple(toy_voc.SHAPES))
    shape = shapes[int(rng.integers(len(shapes)))]
    if centre is None:
        centre = rng.uniform((size / 2, size / 2), (w - size / 2, h - size / 2))
    angle = float(rng.uniform(-np.pi, np.pi))
    if encoding == "polygon":
        seg = [[round(float(v), 2) for v in np.clip(p, 0, (w, h)).ravel()]
               for p in _placed(shape, centre, size, angle)]
        seg = [p for p in seg if mask_utils.area(mask_utils.frPyObjects([p], h, w))[0] > 0]
    else:
        seg = _rle_str(toy_voc.shape_mask(shape, hw, centre, size, angle))
    return {"category_id": cat, "segmentation": seg, "iscrowd": 0}


def _crowd(rng: np.random.Generator, hw: tuple[int, int], cat: int, centre) -> dict:
    """A crowd region: the union of 3 ellipses around ``centre``, uncompressed RLE."""
    h, w = hw
    blob = np.zeros(hw, np.uint8)
    for _ in range(3):
        c = np.clip(np.asarray(centre) + rng.normal(0, min(hw) / 8, 2), 0, (w - 1, h - 1))
        axes = tuple(int(a) for a in rng.integers(min(hw) // 8, min(hw) // 4, 2))
        cv2.ellipse(blob, tuple(int(v) for v in c), axes, float(rng.uniform(0, 180)), 0, 360,
                    1, -1)
    return {"category_id": cat, "segmentation": _rle_list(blob > 0), "iscrowd": 1}


def _objects(rng: np.random.Generator, hw: tuple[int, int], kind: str) -> list[dict]:
    cats = [CATEGORY_IDS[i] for i in rng.permutation(len(CATEGORY_IDS))[:3]]
    short, centre = min(hw), np.array([hw[1], hw[0]]) / 2
    if kind == "empty":
        return []
    if kind == "overlap":  # the small one (an RLE) on the large one (polygons of several parts)
        return [_instance(rng, hw, cats[0], 0.75 * short, centre, "polygon", MULTI_PART),
                _instance(rng, hw, cats[1], 0.35 * short, centre + rng.uniform(-4, 4, 2),
                          "rle")]
    if kind == "crowd":
        inst = _instance(rng, hw, cats[0], 0.5 * short, centre, "polygon")
        return [inst, _crowd(rng, hw, cats[1], centre + (short / 5, 0))]
    if kind == "crowd_only":
        return [_crowd(rng, hw, cats[0], centre - short / 6), _crowd(rng, hw, cats[1], centre)]
    n = int(rng.integers(1, 4))
    return [_instance(rng, hw, c, float(rng.uniform(0.3, 0.6)) * short) for c in cats[:n]]


def _image(rng: np.random.Generator, hw: tuple[int, int], objects: list[dict]) -> np.ndarray:
    """uint8 (H, W, 3): the toy VOC background, each object textured on its rasterised mask,
    larger first."""
    from data.prepare_coco import instance_mask

    img = toy_voc.background(rng, hw)
    masks = [instance_mask(o["segmentation"], *hw) for o in objects]
    order = sorted(range(len(objects)),  # crowds under instances, then larger first
                   key=lambda i: (-objects[i]["iscrowd"], -int(masks[i].sum())))
    for i in order:
        label = LABEL_OF_ID[objects[i]["category_id"]]
        centre = np.argwhere(masks[i]).mean(0)[::-1] if masks[i].any() else (0, 0)
        toy_voc._paint_object(img, masks[i], (label - 1) % 20 + 1, centre,
                              float(rng.uniform(-0.2, 0.2)), rng)
    img = cv2.GaussianBlur(img, (3, 3), 0.6) + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _write_split(root: Path, split: str, n: int, seed: int, next_ann: int) -> tuple[dict, int]:
    """Write one split's JPEGs; return its instances dict and the next free annotation id."""
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for i in range(n):
        rng = np.random.Generator(np.random.PCG64([seed, SPLIT_CODE[split], i]))
        hw = tuple(int(s) for s in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
        kind = SPECIAL[split][i] if i < len(SPECIAL[split]) else "random"
        objects = _objects(rng, hw, kind)
        img_id = FIRST_ID[split] + i
        file = f"COCO_{split}2014_{img_id:012d}.jpg"
        pixels = _image(rng, hw, objects)
        atomic_save(root / f"{split}2014" / file,
                    lambda f, px=pixels: Image.fromarray(px).save(f, format="JPEG", quality=92))
        images.append({"license": 1, "file_name": file, "height": hw[0], "width": hw[1],
                       "date_captured": "2026-01-01 00:00:00", "id": img_id})
        for o in objects:
            seg = o["segmentation"]
            rle = (mask_utils.merge(mask_utils.frPyObjects(seg, *hw)) if isinstance(seg, list)
                   else mask_utils.frPyObjects(seg, *hw) if isinstance(seg["counts"], list)
                   else seg)
            anns.append({"segmentation": seg, "area": float(mask_utils.area(rle)),
                         "iscrowd": o["iscrowd"], "image_id": img_id,
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                         "category_id": o["category_id"], "id": next_ann})
            next_ann += 1
    return {"info": {"description": "toy COCO 2014 (data.toy_coco)", "version": "1.0",
                     "year": 2014}, "images": images,
            "licenses": [{"id": 1, "name": "synthetic", "url": ""}], "annotations": anns,
            "categories": [{"supercategory": supercategory(c), "id": c, "name": name}
                           for c, name in CATEGORIES]}, next_ann


def _write_all(root: Path, seed: int, n_train: int, n_val: int) -> dict:
    counts, next_ann = {"train": n_train, "val": n_val}, 1
    summary = {}
    for split, n in counts.items():
        data, first = _write_split(root, split, n, seed, next_ann)
        next_ann = first
        atomic_save(root / "annotations" / f"instances_{split}2014.json",
                    lambda f, d=data: f.write(json.dumps(d).encode()))
        summary[split] = {"images": n, "annotations": len(data["annotations"]),
                          "crowd": sum(a["iscrowd"] for a in data["annotations"])}
    return summary


def generate(out_dir: str | os.PathLike, seed: int = 0, n_train: int = 12,
             n_val: int = 6) -> dict:
    """Write the toy COCO to ``out_dir`` (built under a temporary name when it is new, as
    :func:`data.toy_voc.generate`); returns per split its image, annotation and crowd counts."""
    if seed < 0:
        raise UserError(f"--seed must be >= 0 (got {seed})")
    for split, n in (("train", n_train), ("val", n_val)):
        if n < len(SPECIAL[split]):
            raise UserError(f"--n-{split} must be >= {len(SPECIAL[split])} (the special "
                            f"images of the split), got {n}")
    t0, out = time.perf_counter(), Path(out_dir)
    res = toy_voc.build_folder(out, lambda root: _write_all(root, seed, n_train, n_val))
    return {"out_dir": str(out), **res, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Generate the built-in toy MS COCO 2014 data set.")
    p.add_argument("--out", required=True, help="output folder (the coco_root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=12, help="train2014 images")
    p.add_argument("--n-val", type=int, default=6, help="val2014 images")
    a = p.parse_args(argv)
    s = generate(a.out, a.seed, a.n_train, a.n_val)
    print(f"toy COCO in {s['out_dir']}: " + "; ".join(
        f"{k} {s[k]['images']} images, {s[k]['annotations']} annotations ({s[k]['crowd']} crowd)"
        for k in ("train", "val")) + f"; {s['seconds']:.1f} s")
    return s


if __name__ == "__main__":
    cli_main(main)
