"""Multi-scale CAM inference (METHOD.md 6): one ``.npy`` dict per image for the IRN hand-off, plus
optional raw-CAM dicts, label PNGs at ``camT`` (optionally CRF-refined) and overlays.

Images whose requested outputs all exist are skipped, and every file is written atomically,
so an interrupted run continues where it stopped. Under ``torchrun --nproc_per_node N`` each
process takes every N-th image of the list (on one machine or several) and writes its own files.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import MultiScaleDataset
from data.voc import (
    NUM_CLASSES,
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
from tool.common.dist import local_device, rank_world, shard
from tool.common.errors import UserError
from tool.common.fileio import save_npy_dict
from tool.common.runtime import resolve_device, setup_logging
from tool.crf import CRFParams, crf_labels

log = logging.getLogger("plmix")


def output_paths(args: Namespace, name: str) -> dict[str, Path]:
    """The files this run writes for one image, keyed by output kind (only those asked for)."""
    spec = {"npy": (args.out_npy, ".npy"), "cam_npy": (args.out_cam_npy, ".npy"),
            "png": (args.out_png, ".png"), "vis": (args.out_vis, ".png")}
    return {k: Path(d) / f"{name}{ext}" for k, (d, ext) in spec.items() if d}


def label_from_dict(d: dict[int, np.ndarray], camT: float, size_hw: tuple[int, int],
                    image: np.ndarray | None = None, crf: CRFParams | None = None
                    ) -> np.ndarray:
    """Label map (H, W) uint8 from a present-class dict: background = camT, argmax, or the
    dense CRF over background + present classes when ``image`` (H, W, 3 uint8) is given
    (settings ``crf``, None: the released ones; METHOD.md 6 step 5)."""
    maps = np.zeros((NUM_CLASSES, *size_hw), np.float32)
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
    """Forward all passes of one image and write every requested output."""
    name, size = sample["name"], tuple(sample["size"])
    paths = output_paths(args, name)
    cam, sgc, _ = msf_cams(model, sample["img"], size, device)
    sgc_d = present_dict(sgc, sample["label"])
    if "cam_npy" in paths:
        save_npy_dict(paths["cam_npy"], present_dict(cam, sample["label"]))
    if "png" in paths or "vis" in paths:
        rgb = np.asarray(load_image(image_path(args.voc12_root, name)))
        label = label_from_dict(sgc_d, camT, size, rgb if args.crf else None, crf)
        if "png" in paths:
            save_label_png(label, paths["png"])
        if "vis" in paths:
            save_overlay(paths["vis"], rgb, sgc_d, label)
    if "npy" in paths:  # written last: its presence marks the image as done
        save_npy_dict(paths["npy"], sgc_d)


def todo_names(names: list[str], args: Namespace) -> list[str]:
    return [n for n in names if not all(p.exists() for p in output_paths(args, n).values())]


def run(args: Namespace, model: torch.nn.Module, camT: float) -> int:
    """Infer every image of ``args.infer_list`` not done yet; returns how many were written."""
    setup_logging()
    device = local_device(resolve_device(args.device))
    names = shard(load_img_name_list(args.infer_list))  # all of them outside torchrun
    todo = todo_names(names, args)
    rank, world = rank_world()
    log.info("inference%s: %d images in %s, %d already done, camT %.2f, scales %s",
             f" (rank {rank} of {world})" if world > 1 else "", len(names), args.infer_list,
             len(names) - len(todo), camT, args.infer_scales)
    if not todo:
        return 0
    ds = MultiScaleDataset(todo, args.voc12_root, load_cls_labels(args.cls_labels),
                           scales=args.infer_scales)
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
    if no_weights(args.weights):
        raise UserError("--weights is required: the trained checkpoint (e.g. runs/demo/best.ckpt)")
    model, ckpt_camT = load_trained(args, args.weights)
    return run(args, model, select_camT(args, ckpt_camT))
