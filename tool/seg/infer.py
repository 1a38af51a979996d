"""Stage-3 inference over an image list (METHOD.md 14.6): ``run`` (``infer_seg.py``); the
numerics (multi-scale + flip fusion, the CRF) live in :mod:`tool.seg.msf`.

Per image: 6 scales x flip through the network, the mean of the 12 softmax maps, the released
dense CRF (``seg_crf``), the argmax, all over ``num_classes`` channels (21 VOC, 81 COCO),
written atomically as ``<out_seg>/<name>.png`` (the data set's palette, ``data.description``:
VOC's, which COCO shares; or MuSCLe's grey file with ``seg_label_png: gray``) and, with
``test_submission DIR`` (VOC only), as
``DIR/results/VOC2012/Segmentation/comp6_test_cls/<name>.png`` (palettised, the VOC test
server's layout). "The PNG exists" means "finished": a rerun skips those images; each output
folder records the settings of its files (a rerun with others is refused unless
``--overwrite``). Under torchrun each process takes every N-th image.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.description import VOC12, describe
from data.voc import image_path, load_img_name_list, save_label_png
from tool.common.dist import is_main, local_device, rank_world, shard
from tool.common.errors import UserError
from tool.common.logs import setup_logging
from tool.common.preflight import Problems, check_output_folder
from tool.common.provenance import (
    file_sha256,
    prepare_output_folders,
    recorded_differences,
)
from tool.common.runtime import configure_threads, resolve_device
from tool.seg.msf import (
    CRF_PARAMS,
    crf_refine,
    load_rgb,
    msf_fuse,
    msf_predict,
    predict_label,
    scaled_inputs,
)

__all__ = ["CRF_PARAMS", "crf_refine", "msf_fuse", "msf_predict", "predict_label",
           "scaled_inputs", "run"]

log = logging.getLogger("plmix")

PRED, SUBMIT = "seg_png", "test_submission"  # the output kinds .provenance.json records
SUBMISSION_DIR = Path("results/VOC2012/Segmentation/comp6_test_cls")


def output_folders(args: Namespace) -> dict[str, Path]:
    """{kind: folder}: the prediction PNGs, and the test-server layout when asked for (VOC
    only: another data set's ``--test_submission`` is a UserError)."""
    folders = {PRED: Path(args.out_seg)}
    if args.test_submission:
        data = describe(args.num_classes)
        if data is not VOC12:
            raise UserError(f"--test_submission writes the {VOC12.title} test server's layout; "
                            f"num_classes {data.num_classes} ({data.title}) has no such "
                            "layout: leave --test_submission out")
        folders[SUBMIT] = Path(args.test_submission) / SUBMISSION_DIR
    return folders


def output_settings(args: Namespace, weights_sha256: str) -> dict[str, dict[str, Any]]:
    """Per output kind, what its files depend on (the device does not count)."""
    base = {"seg_weights_sha256": weights_sha256, "seg_arch": args.seg_arch,
            "seg_scales": [float(s) for s in args.seg_scales], "seg_flip": bool(args.seg_flip),
            "seg_crf": bool(args.seg_crf), "voc12_root": str(Path(args.voc12_root).resolve())}
    return {PRED: {**base, "seg_label_png": args.seg_label_png}, SUBMIT: base}


def preflight(args: Namespace, names: list[str], folders: dict[str, Path],
              settings: dict[str, dict] | None) -> list[str]:
    """Every problem at once, before any compute; returns the names still to do."""
    problems = Problems()
    if not Path(args.seg_weights).is_file():
        problems.add(f"--seg_weights file not found: {args.seg_weights} (train it with "
                     "train_seg.py, or give MuSCLe's released _7.pth)")
    overwrite = bool(getattr(args, "overwrite", False))
    for kind, folder in folders.items():
        check_output_folder(problems, folder, "--out_seg" if kind == PRED else
                            "--test_submission")
        if settings is not None and not overwrite and folder.is_dir():
            diffs = recorded_differences(folder, {kind: settings[kind]}, {kind: ".png"}, names)
            if diffs:
                problems.add(f"{folder} holds predictions of other settings "
                             f"({'; '.join(diffs)}): add --overwrite to delete them first, or "
                             "choose another folder")
    problems.add_group(f"images missing from {Path(args.voc12_root) / 'JPEGImages'}",
                       [f"{n}.jpg" for n in names if not image_path(args.voc12_root, n)
                        .is_file()])
    problems.raise_if_any()
    if overwrite:
        return list(names)
    return [n for n in names if not all((f / f"{n}.png").is_file() for f in folders.values())]


def load_model(args: Namespace, device: torch.device) -> torch.nn.Module:
    """The SegNet of ``seg_arch`` over ``num_classes`` with ``seg_weights`` loaded strictly
    (a file of another arch or class count is one line naming it)."""
    from net.seg_net import SegNet, load_seg_checkpoint

    model = SegNet(args.seg_arch, num_classes=args.num_classes, backbone_weights=None,
                   output_stride=args.seg_output_stride, aux_loss=bool(args.aux_loss),
                   toy_width=args.seg_toy_width)
    load_seg_checkpoint(model, args.seg_weights, allow_pickle=bool(args.allow_pickle))
    return model.eval().to(device)


def predict_one(model: torch.nn.Module, name: str, args: Namespace, device: torch.device
                ) -> Any:
    """The label map (np uint8 (H, W)) of one image (METHOD.md 14.6 steps 2-7)."""
    img = load_rgb(image_path(args.voc12_root, name))
    probs = msf_predict(model, img, scales=tuple(args.seg_scales), flip=bool(args.seg_flip),
                        device=device)
    if args.seg_crf:
        probs = crf_refine(img, probs)  # the released CRF: its defaults are MuSCLe's values
    return predict_label(probs)


def save_outputs(label: Any, name: str, args: Namespace, folders: dict[str, Path]) -> None:
    if SUBMIT in folders:  # the test server reads indexed PNGs with the VOC palette
        save_label_png(label, folders[SUBMIT] / f"{name}.png")
    # last: it marks the image done
    save_label_png(label, folders[PRED] / f"{name}.png", palette=args.seg_label_png == "palette")


def run(args: Namespace) -> int:
    """``infer_seg.py``: predictions for every image of ``seg_infer_list`` (this process's
    share under torchrun) not done yet; returns how many were written."""
    setup_logging(quiet=not is_main())
    configure_threads(args.threads)
    device = local_device(resolve_device(args.device))
    all_names = load_img_name_list(args.seg_infer_list)
    names = shard(all_names)
    folders = output_folders(args)
    weights = Path(args.seg_weights)
    settings = output_settings(args, file_sha256(weights)) if weights.is_file() else None
    todo = preflight(args, names, folders, settings)
    rank, world = rank_world()
    log.info("segmentation%s: %d images of %s, %d already done, %d scales%s, CRF %s -> %s",
             f" (rank {rank} of {world})" if world > 1 else "", len(names),
             args.seg_infer_list, len(names) - len(todo), len(args.seg_scales),
             " x flip" if args.seg_flip else "", "on" if args.seg_crf else "off",
             ", ".join(map(str, folders.values())))
    if not todo:
        return 0
    model = load_model(args, device)  # a file of another arch: one line, before any output
    prepare_output_folders(folders, {kind: ".png" for kind in folders}, settings,
                           {"seg_weights": str(weights), "infer_list": str(args.seg_infer_list)},
                           all_names, names, rank, bool(getattr(args, "overwrite", False)))
    for name in tqdm(todo, desc="segmentation", disable=not is_main()):
        save_outputs(predict_one(model, name, args, device), name, args, folders)
    return len(todo)
