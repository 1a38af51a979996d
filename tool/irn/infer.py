"""Stage-2 inference (METHOD.md 13.6): the random walk over IRN's edge map turns the stage-1 CAM
dicts of a list into semantic pseudo labels: ``infer_irn``.

Per image: the image and its flip through ``IRNet.edge_displacement`` (13.6.1), the hand-off
CAM dict on the edge grid (13.6.2), the walk (13.6.3), labels (13.6.4). Outputs (13.6.5):
``<sem_seg_out_dir>_png/<name>.png`` (uint8 label values 0..num_fg, VOC palette or grey; COCO's
0..80 use the same palette) and, with ``soft_output``, ``<sem_seg_out_dir>/<name>.npy`` (float16
H x W x num_classes: 21 on VOC, 81 on COCO; ``args.num_classes``). Both are written
atomically, the PNG last, so "the PNG (and npy) exist" means "finished": a rerun skips those
images. Each output folder records the settings its files come from (``.provenance.json``): a
rerun with other settings is refused unless ``--overwrite`` deletes the old files first. The
walk's engine is no such setting (both give the same labels). Under ``torchrun`` each process
takes every N-th image of the list.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.transforms import normalize
from data.voc import image_path, load_image, load_img_name_list, save_label_png
from net.irn_net import IRN_BACKBONES, IRNet, load_irn_checkpoint
from net.weights import read_state_dict
from tool.common.checkpoint import allow_unsafe_pickle
from tool.common.dist import is_main, local_device, rank_world, shard
from tool.common.fileio import atomic_save
from tool.common.logs import setup_logging
from tool.common.preflight import Problems, check_output_folder
from tool.common.provenance import (
    file_sha256,
    prepare_output_folders,
    recorded_differences,
)
from tool.common.runtime import configure_threads, resolve_device
from tool.eval.evaluation import check_cam_dict, load_cam_dict
from tool.irn.random_walk import refine_cams, resolve_engine

log = logging.getLogger("plmix")

PNG, NPY = "sem_seg_png", "sem_seg_npy"  # the output kinds .provenance.json records
EXTENSIONS = {PNG: ".png", NPY: ".npy"}
RESNET_STEM = 64  # conv1 channels of a full-width ResNet: the trunk width of a checkpoint


def output_folders(args: Namespace) -> dict[str, Path]:
    """{kind: folder} of the outputs asked for: always the PNGs, the soft npy with
    ``soft_output`` (MuSCLe's layout: ``<out>_png`` and ``<out>``, METHOD.md 13.6.5)."""
    out = Path(args.sem_seg_out_dir)
    folders = {PNG: out.with_name(out.name + "_png")}
    if args.soft_output:
        folders[NPY] = out
    return folders


def output_paths(folders: dict[str, Path], name: str) -> dict[str, Path]:
    return {k: d / f"{name}{EXTENSIONS[k]}" for k, d in folders.items()}


def output_settings(args: Namespace, weights_sha256: str) -> dict[str, dict[str, Any]]:
    """Per output kind, what its files depend on: the IRN weights, the walk's parameters, the
    inputs; the PNGs also on their colour mode. Not the engine, nor the CAM channel layout: both
    choices give the same labels (METHOD.md 13.6.2, 13.6.7). Nor the class count: it only
    bounds the CAM keys and sizes the soft maps, and ``voc12_root`` tells the data sets apart."""
    base = {"irn_weights_sha256": weights_sha256, "beta": float(args.beta),
            "exp_times": int(args.exp_times), "sem_seg_bg_thres": float(args.sem_seg_bg_thres),
            "infer_radius": int(args.infer_radius),
            "pad": int(args.irn_crop_size) if args.pad_to_crop else None,
            "cam_dir": str(Path(args.cam_dir).resolve()),
            "voc12_root": str(Path(args.voc12_root).resolve())}
    return {PNG: {**base, "label_png": args.label_png}, NPY: base}


def preflight(args: Namespace, names: Sequence[str], folders: dict[str, Path],
              settings: dict[str, dict] | None) -> list[str]:
    """Every problem of the inputs and output folders in one PreflightError, before any
    compute; returns the names still to do. ``settings`` None: the weights are missing (that
    problem is already known), so the folders' records are not compared."""
    problems = Problems()
    weights = Path(args.irn_weights_name)
    if not weights.is_file():
        problems.add(f"--irn_weights_name file not found: {weights} (train it with "
                     "train_irn.py, or give IRN's/MuSCLe's released file)")
    cam_dir, root = Path(args.cam_dir), Path(args.voc12_root)
    overwrite = bool(getattr(args, "overwrite", False))
    for kind, folder in folders.items():
        flag = "--sem_seg_out_dir" + ("_png" if kind == PNG else "")
        check_output_folder(problems, folder, flag)
        if folder.resolve() == cam_dir.resolve() or folder.resolve() == (root / "JPEGImages"
                                                                            ).resolve():
            problems.add(f"{flag} {folder} is an input folder: its files would be overwritten")
        if settings is not None and not overwrite and folder.is_dir():
            diffs = recorded_differences(folder, {kind: settings[kind]}, EXTENSIONS, names)
            if diffs:
                problems.add(f"{folder} holds pseudo labels of other settings "
                             f"({'; '.join(diffs)}): add --overwrite to delete them first, or "
                             "choose another --sem_seg_out_dir")
    todo = list(names) if overwrite else [
        n for n in names if not all(p.is_file() for p in output_paths(folders, n).values())]
    if not cam_dir.is_dir():
        problems.add(f"--cam_dir {cam_dir} is not a folder")
    else:
        missing = [n for n in todo if not (cam_dir / f"{n}.npy").is_file()]
        if missing and len(missing) == len(todo) and len(todo) > 1:
            others = sum(1 for _ in cam_dir.glob("*.npy"))
            problems.add(f"--cam_dir {cam_dir} holds none of the {len(todo)} images of "
                         f"--infer_list {args.infer_list} ({others} other CAM files): the CAM "
                         "dicts of another list? (stage 1 writes train_aug for stage 2)")
        else:
            problems.add_group(f"CAM files missing from {cam_dir}",
                               [f"{n}.npy" for n in missing])
    problems.add_group(f"images missing from {root / 'JPEGImages'}",
                       [f"{n}.jpg" for n in todo if not image_path(root, n).is_file()])
    problems.raise_if_any()
    return todo


def irn_architecture(state: dict[str, torch.Tensor]) -> tuple[str, float]:
    """(backbone, width) of the IRN a state dict holds: the trunk's registered name and its
    stem's channels; the stage aliases for files without the trunk's own keys (June 2019)."""
    for name in IRN_BACKBONES:
        if f"{name}.conv1.weight" in state:
            return name, state[f"{name}.conv1.weight"].shape[0] / RESNET_STEM
    stem = state.get("stage1.0.weight")
    if stem is None:  # heads only: the reference trunk, from its ImageNet file
        return "resnet50", 1.0
    bottleneck = "stage2.0.0.conv3.weight" in state
    return ("resnet50" if bottleneck else "resnet18"), stem.shape[0] / RESNET_STEM


def load_irn(args: Namespace, device: torch.device) -> IRNet:
    """The IRN of ``--irn_weights_name`` (ours: train_irn's checkpoint, {"model": state dict};
    IRN's or MuSCLe's released files), built to its layout and loaded strictly (13.7.5)."""
    path = args.irn_weights_name
    backbone, width = irn_architecture(read_state_dict(path, args.allow_pickle))
    model = IRNet(backbone=backbone, crop_size=args.irn_crop_size,
                  pad_to_crop=args.pad_to_crop, backbone_width=width)
    load_irn_checkpoint(model, path, allow_pickle=args.allow_pickle)
    return model.eval().to(device)


def image_pair(path: Path, device: torch.device) -> torch.Tensor:
    """(2, 3, H, W): the ImageNet-normalised image and its horizontal flip (13.6.1)."""
    img = torch.from_numpy(normalize(load_image(path))).permute(2, 0, 1)
    return torch.stack([img, img.flip(-1)]).to(device)


def infer_one(model: IRNet, name: str, args: Namespace, folders: dict[str, Path],
              engine: str, device: torch.device) -> list[int]:
    """Refine one image's CAMs and write its outputs (the PNG last: it marks the image done);
    returns the CAM dict's keys. A bad CAM dict is a UserError naming its file, before
    anything of the image is written."""
    pair = image_pair(image_path(args.voc12_root, name), device)
    cam_path = Path(args.cam_dir) / f"{name}.npy"
    size = tuple(pair.shape[2:])
    cams = check_cam_dict(load_cam_dict(cam_path), size, str(cam_path),
                          num_classes=args.num_classes)
    cams = {k: np.asarray(v, np.float32) for k, v in cams.items()}
    label, soft = refine_cams(model, pair, cams, args.beta, args.exp_times,
                              args.sem_seg_bg_thres, args.infer_radius, engine=engine,
                              present_only=args.edge_grid_cams == "present",
                              num_classes=args.num_classes)
    paths = output_paths(folders, name)
    if NPY in paths:
        atomic_save(paths[NPY], lambda f: np.save(f, soft))
    save_label_png(label, paths[PNG], palette=args.label_png == "palette")
    return sorted(int(k) for k in cams)


def run(args: Namespace) -> int:
    """``infer_irn.py``: pseudo labels for every image of ``args.infer_list`` (this process's
    share under torchrun) not done yet; returns how many were written."""
    setup_logging(quiet=not is_main())
    configure_threads(args.threads)
    if args.allow_pickle:
        allow_unsafe_pickle()
    from tool.irn.presets import apply_preset

    preset = getattr(args, "irn_preset", None)
    if apply_preset(args, preset):
        log.info("preset %s: beta %g, exp_times %d, sem_seg_bg_thres %.2f", preset, args.beta,
                 args.exp_times, args.sem_seg_bg_thres)
    device = local_device(resolve_device(args.device))
    engine = resolve_engine(args.rw_engine, device)
    all_names = load_img_name_list(args.infer_list)
    names = shard(all_names)  # all of them outside torchrun
    folders = output_folders(args)
    weights = Path(args.irn_weights_name)
    settings = output_settings(args, file_sha256(weights)) if weights.is_file() else None
    todo = preflight(args, names, folders, settings)
    rank, world = rank_world()
    log.info("random walk%s: %d images in %s, %d already done, beta %g, exp_times %d, "
             "bg_thres %.2f, engine %s -> %s", f" (rank {rank} of {world})" if world > 1 else "",
             len(names), args.infer_list, len(names) - len(todo), args.beta, args.exp_times,
             args.sem_seg_bg_thres, engine, ", ".join(map(str, folders.values())))
    if not todo:
        return 0
    model = load_irn(args, device)  # a file of another layout: one line, before any output
    prepare_output_folders(folders, EXTENSIONS, settings,
                           {"irn_weights_name": str(weights), "infer_list": str(args.infer_list)},
                           all_names, names, rank, bool(getattr(args, "overwrite", False)))
    keys = {name: infer_one(model, name, args, folders, engine, device)
            for name in tqdm(todo, desc="random walk", disable=not is_main())}
    if Path(args.cls_labels).is_file():  # Q27: the dict keys are trusted, as in IRN
        from data.voc import load_cls_labels
        from tool.irn.make_labels import warn_absent_classes

        warn_absent_classes(keys, load_cls_labels(args.cls_labels))
    return len(todo)

