"""Multi-scale CAM inference (METHOD.md 6): one ``.npy`` dict per image for the IRN hand-off, plus
optional raw-CAM dicts, label PNGs at ``camT`` (optionally CRF-refined) and overlays.

Images whose requested outputs all exist are skipped, and every file is written atomically,
so an interrupted run continues where it stopped. Each output folder records the settings its
files come from (``.provenance.json``): a rerun with other settings (checkpoint, scales, camT,
CRF...) is refused rather than mixed with the old files, unless ``--overwrite`` deletes them
first. Under ``torchrun --nproc_per_node N`` each process takes every N-th image of the list
(on one machine or several) and writes its own files.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import MultiScaleDataset
from data.description import describe
from data.preflight import DatasetCheck
from data.voc import (
    image_path,
    load_cls_labels,
    load_image,
    load_img_name_list,
    save_label_png,
)
from net.weights import no_weights
from tool.cam.build import load_trained
from tool.cam.msf import msf_cams, present_dict
from tool.cam.vis import save_overlay
from tool.common.checkpoint import allow_unsafe_pickle
from tool.common.dist import local_device, rank_world, shard
from tool.common.errors import UserError
from tool.common.fileio import save_npy_dict
from tool.common.logs import setup_logging
from tool.common.preflight import Problems, check_output_folder
from tool.common.provenance import (
    file_sha256,
    recorded_differences,
    remove_outputs,
    write_provenance,
)
from tool.common.runtime import configure_threads, resolve_device
from tool.crf import CRFParams, crf_labels

log = logging.getLogger("plmix")


EXTENSIONS = {"npy": ".npy", "cam_npy": ".npy", "png": ".png", "vis": ".png"}
LABEL_KINDS = ("png", "vis")  # the outputs that also depend on camT and the CRF


def output_folders(args: Namespace) -> dict[str, Path]:
    """The folder of each output kind asked for (``out_npy`` -> "npy", ...)."""
    return {k: Path(d) for k in EXTENSIONS if (d := getattr(args, f"out_{k}"))}


def output_paths(args: Namespace, name: str) -> dict[str, Path]:
    """The files this run writes for one image, keyed by output kind (only those asked for)."""
    return {k: d / f"{name}{EXTENSIONS[k]}" for k, d in output_folders(args).items()}


def label_from_dict(d: dict[int, np.ndarray], camT: float, size_hw: tuple[int, int],
                    image: np.ndarray | None = None, crf: CRFParams | None = None, *,
                    num_classes: int) -> np.ndarray:
    """Label map (H, W) uint8, values 0..num_classes - 1, from a present-class dict (keys
    0..num_classes - 2): background = camT, argmax, or the dense CRF over background + present
    classes when ``image`` (H, W, 3 uint8) is given (settings ``crf``, None: the released
    ones; METHOD.md 6 step 5). ``num_classes``: the run's (21 VOC, 81 COCO), the CRF's C."""
    maps = np.zeros((num_classes, *size_hw), np.float32)
    maps[0] = camT
    for k, m in d.items():
        maps[k + 1] = m
    if image is None:
        return maps.argmax(0).astype(np.uint8)
    present = np.array(sorted(d), dtype=np.int64) + 1
    return crf_labels(image, np.clip(maps, 0, 1), present,
                      params=CRFParams() if crf is None else crf).astype(np.uint8)


def infer_one(model, sample: dict, args: Namespace, camT: float, device: torch.device,
              crf: CRFParams | None) -> None:
    """Forward all passes of one image and write every requested output (the data set of
    ``args.num_classes``: dict keys 0..num_classes - 2, label values 0..num_classes - 1)."""
    name, size = sample["name"], tuple(sample["size"])
    paths = output_paths(args, name)
    cam, sgc, _ = msf_cams(model, sample["img"], size, device)
    sgc_d = present_dict(sgc, sample["label"])
    if "cam_npy" in paths:
        save_npy_dict(paths["cam_npy"], present_dict(cam, sample["label"]))
    if "png" in paths or "vis" in paths:
        rgb = np.asarray(load_image(image_path(args.voc12_root, name)))
        label = label_from_dict(sgc_d, camT, size, rgb if args.crf else None, crf,
                                num_classes=args.num_classes)
        if "png" in paths:
            save_label_png(label, paths["png"])
        if "vis" in paths:
            save_overlay(paths["vis"], rgb, sgc_d, label, describe(args.num_classes).palette())
    if "npy" in paths:  # written last: its presence marks the image as done
        save_npy_dict(paths["npy"], sgc_d)


def todo_names(names: list[str], args: Namespace) -> list[str]:
    return [n for n in names if not all(p.exists() for p in output_paths(args, n).values())]


def preflight(args: Namespace, decode: bool = False) -> str:
    """Every check of the inference inputs and output folders (METHOD.md 12.7), all problems in
    one PreflightError; returns a summary for the log. Each process checks the images of its
    own share of the list. ``decode``: decode every image, not only its header."""
    problems = Problems()
    if not no_weights(args.weights) and not Path(args.weights).is_file():
        problems.add(f"--weights file not found: {args.weights}")
    data = DatasetCheck(problems, args.voc12_root, args.cls_labels, decode=decode,
                        num_fg=describe(args.num_classes).num_fg)
    data.split(args.infer_list, images=shard)
    data.finish()
    folders = output_folders(args)
    if not folders:
        problems.add("no output asked for: set --out_npy, --out_cam_npy, --out_png or --out_vis")
    inputs = {Path(args.voc12_root) / "JPEGImages": "the image folder"}
    if getattr(args, "gt", None):
        inputs[Path(args.gt)] = "the GT folder"
    inputs = {p.resolve(): what for p, what in inputs.items()}
    seen: dict[tuple[Path, str], str] = {}
    for kind, folder in folders.items():
        key = (folder.resolve(), EXTENSIONS[kind])
        if key in seen:  # e.g. --out_png = --out_vis: one file name for two outputs
            problems.add(f"--out_{kind} and --out_{seen[key]} are the same folder {folder}: "
                         f"their {key[1]} files would overwrite each other")
            continue
        if key[0] in inputs:
            problems.add(f"--out_{kind} {folder} is {inputs[key[0]]}: its files would be "
                         "taken for finished outputs or overwritten")
        if key[0] not in {k[0] for k in seen}:
            check_output_folder(problems, folder, f"--out_{kind}")
        seen[key] = kind
    problems.raise_if_any()
    return f"preflight: {len(data.sizes)} images and {len(folders)} output folder(s) checked"


def output_settings(args: Namespace, camT: float) -> dict[str, dict[str, Any]]:
    """Per output kind, the settings its files depend on (what ``.provenance.json`` records):
    the checkpoint's SHA-256 (None for a model passed in without ``--weights``), backbone,
    scales, image root; for label PNGs and overlays also camT and the CRF."""
    base = {"checkpoint_sha256": None if no_weights(args.weights) else file_sha256(args.weights),
            "backbone": args.backbone, "infer_scales": [float(s) for s in args.infer_scales],
            "voc12_root": str(Path(args.voc12_root).resolve())}
    labels = {**base, "camT": float(camT),
              "crf": asdict(CRFParams.from_config(args)) if args.crf else None}
    return {k: labels if k in LABEL_KINDS else base for k in output_folders(args)}


def prepare_outputs(args: Namespace, camT: float, all_names: list[str], names: list[str]
                    ) -> None:
    """Before the first output: refuse folders holding another run's outputs (one line naming
    what differs), delete them with ``args.overwrite`` (always) or ``args.replace_stale``
    (only when they differ), and record this run's settings in each folder."""
    new = output_settings(args, camT)
    by_folder: dict[Path, list[str]] = {}
    for kind, folder in output_folders(args).items():
        by_folder.setdefault(folder, []).append(kind)
    overwrite = bool(getattr(args, "overwrite", False))
    stale = {}
    for folder, kinds in by_folder.items():
        exts = {k: EXTENSIONS[k] for k in kinds}
        diffs = recorded_differences(folder, {k: new[k] for k in kinds}, exts, names)
        if diffs:
            stale[folder] = diffs
    if stale and not (overwrite or getattr(args, "replace_stale", False)):
        where = ", ".join(f"{f} ({'; '.join(d)})" for f, d in stale.items())
        raise UserError(f"{where} {'holds' if len(stale) == 1 else 'hold'} outputs of another "
                        "inference run: add --overwrite to delete them first, or choose "
                        "another output folder")
    run_info = {"weights": None if no_weights(args.weights) else str(args.weights),
                "infer_list": str(args.infer_list)}
    for folder, kinds in by_folder.items():
        if overwrite or folder in stale:
            gone = remove_outputs(folder, sorted({EXTENSIONS[k] for k in kinds}), all_names,
                                  names, rank_world()[0])
            if gone:
                log.info("removed %d output(s) of a previous inference run from %s", gone,
                         folder)
        write_provenance(folder, {k: new[k] for k in kinds}, run_info)


def run(args: Namespace, model: torch.nn.Module, camT: float) -> int:
    """Infer every image of ``args.infer_list`` not done yet; returns how many were written."""
    setup_logging()
    device = local_device(resolve_device(args.device))
    all_names = load_img_name_list(args.infer_list)
    names = shard(all_names)  # all of them outside torchrun
    prepare_outputs(args, camT, all_names, names)
    todo = todo_names(names, args)
    rank, world = rank_world()
    log.info("inference%s: %d images in %s, %d already done, camT %.2f, scales %s",
             f" (rank {rank} of {world})" if world > 1 else "", len(names), args.infer_list,
             len(names) - len(todo), camT, args.infer_scales)
    if not todo:
        return 0
    ds = MultiScaleDataset(todo, args.voc12_root, load_cls_labels(args.cls_labels),
                           scales=args.infer_scales, num_fg=describe(args.num_classes).num_fg)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.num_workers)
    crf = CRFParams.from_config(args) if args.crf else None  # once per run
    model.eval().to(device)
    for sample in tqdm(loader, desc="infer", total=len(ds)):
        infer_one(model, sample, args, camT, device, crf)
    return len(todo)


def select_camT(args: Namespace, checkpoint_camT: float | None) -> float:
    """The background threshold of the label PNGs (METHOD.md 6 step 1): ``camT`` when the
    command line (or a caller's overrides) set it, else the one the checkpoint records
    (selected during training, METHOD.md 5.6), else the config's."""
    if "camT" in getattr(args, "given", ()) or checkpoint_camT is None:
        return args.camT
    return float(checkpoint_camT)


def run_checkpoint(args: Namespace) -> int:
    """Infer with the trained checkpoint ``args.weights`` at the camT :func:`select_camT`
    picks; returns how many images were written (see :func:`run`)."""
    setup_logging()  # before loading: the log names the keys a released checkpoint ignores
    configure_threads(args.threads)
    if args.allow_pickle:
        allow_unsafe_pickle()
    if no_weights(args.weights):
        raise UserError("--weights is required: the trained checkpoint (e.g. runs/demo/best.ckpt)")
    log.info("%s", preflight(args, decode=args.preflight_decode))
    model, ckpt_camT = load_trained(args, args.weights)
    return run(args, model, select_camT(args, ckpt_camT))
