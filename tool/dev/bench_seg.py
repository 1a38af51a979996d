"""Benchmark section ``seg``: stage 3 on a config's data (the toy config by default).

- training: images/s of ``SegStage.step`` (forward_train, CE + BEACON, backward, clipping,
  optimizer step) on pre-built batches, so the data pipeline is not timed. The bench has no
  stage-2 outputs: the pseudo labels are the data set's GT masks, written as PNGs to a
  temporary folder (a pseudo-label folder of the right format is all the step reads). The
  network is randomly initialised: its logits have few edges, so BEACON admits fewer terms
  than it would for a trained network.
- inference: images/s of the released protocol per image (METHOD.md 14.6): 6 scales x flip
  (12 passes, ``msf_predict``), the 4-iteration dense CRF, the argmax; and the same without
  the CRF, so its share is visible. The network is a randomly initialised SegNet: the CRF
  keeps all the labels (21 on VOC), so its cost does not depend on what the network predicts.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.voc import image_path, load_img_name_list, load_mask, save_label_png
from tool.common.config import SEG_SECTIONS, resolve_config
from tool.common.errors import UserError
from tool.dev.bench import ensure_toy_voc, print_table
from tool.seg.msf import CRF_PARAMS, MSF_SCALES, crf_refine, load_rgb, msf_predict, predict_label

WARMUP = 2  # untimed training iterations (first-call allocations, thread pools)


def add_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--seg_config", default="configs/toy.yaml")
    group.add_argument("--seg_iters", type=int, default=10,
                       help=f"timed training iterations (after {WARMUP} warm-up ones)")
    group.add_argument("--seg_images", type=int, default=20,
                       help="images of the inference timing (the first of seg_infer_list)")


def gt_pseudo_labels(names: list[str], voc12_root: str | Path, out: Path) -> list[str]:
    """Write the GT masks of ``names`` (those that have one) as palettised PNG pseudo labels
    ``out/<name>.png``; returns the names written."""
    gt = Path(voc12_root) / "SegmentationClass"
    done = [n for n in names if (gt / f"{n}.png").is_file()]
    for n in done:
        save_label_png(load_mask(gt / f"{n}.png"), out / f"{n}.png")
    return done


def measure_train(config: str, voc12_root: str, iters: int, tmp: Path) -> dict:
    """Seconds of ``iters`` ``SegStage.step`` calls after WARMUP untimed ones (CPU)."""
    from tool.seg.train import SegStage

    cfg = resolve_config(config, SEG_SECTIONS, {"voc12_root": voc12_root})
    n = (WARMUP + iters) * cfg.seg_batch_size
    # only as many labelled images as the timed batches use (a small set's batches repeat)
    names = gt_pseudo_labels(load_img_name_list(cfg.seg_train_list)[:n], voc12_root,
                             tmp / "labels")
    if len(names) < cfg.seg_batch_size:
        raise UserError(f"the benchmark needs {cfg.seg_batch_size} images of "
                        f"{cfg.seg_train_list} with a GT mask in {voc12_root}/SegmentationClass"
                        f" (its pseudo labels), found {len(names)}")
    (tmp / "train.txt").write_text("\n".join(names) + "\n")
    cfg = resolve_config(config, SEG_SECTIONS, {
        "voc12_root": voc12_root, "seg_train_list": str(tmp / "train.txt"),
        "mask_root": str(tmp / "labels"), "mask_type": "png", "seg_session": str(tmp / "seg"),
        "seg_init_from_cam": None})  # a random trunk: the cost is the same
    stage = SegStage(cfg, torch.device("cpu"))
    stage.train_set.set_epoch(0)
    loader = DataLoader(stage.train_set, batch_size=cfg.seg_batch_size, drop_last=True)
    batches = list(islice(cycle(loader), WARMUP + iters))
    epoch_state = stage.begin_epoch(0)
    for b in batches[:WARMUP]:
        stage.step(stage.module, b, epoch_state)
    t0 = time.perf_counter()
    for b in batches[WARMUP:]:
        stage.step(stage.module, b, epoch_state)
    seconds = time.perf_counter() - t0
    return {"arch": cfg.seg_arch, "batch": cfg.seg_batch_size, "crop": cfg.seg_crop_size,
            "images": iters * cfg.seg_batch_size, "seconds": seconds,
            "images_per_s": iters * cfg.seg_batch_size / seconds}


def measure_infer(config: str, voc12_root: str, n_images: int) -> dict:
    """Per-part seconds of the released inference over the first ``n_images`` images of
    seg_infer_list: image load + 12 passes + fusion, the CRF, the argmax."""
    from tool.seg.train import build_seg_net

    cfg = resolve_config(config, SEG_SECTIONS, {"voc12_root": voc12_root,
                                                "seg_scales": list(MSF_SCALES),
                                                "seg_flip": True, "seg_init_from_cam": None})
    names = load_img_name_list(cfg.seg_infer_list)[:n_images]
    torch.manual_seed(0)
    model = build_seg_net(cfg).eval()
    t_msf = t_crf = t_arg = 0.0
    for name in names:  # predict_one's steps, each timed
        t0 = time.perf_counter()
        img = load_rgb(image_path(voc12_root, name))
        probs = msf_predict(model, img, scales=tuple(cfg.seg_scales), flip=True)
        t1 = time.perf_counter()
        refined = crf_refine(img, probs)  # the released CRF, CRF_PARAMS["iters"] iterations
        t2 = time.perf_counter()
        predict_label(refined)  # the no-CRF path's argmax costs the same
        t3 = time.perf_counter()
        t_msf, t_crf, t_arg = t_msf + t1 - t0, t_crf + t2 - t1, t_arg + t3 - t2
    return {"arch": cfg.seg_arch, "images": len(names), "passes": 2 * len(cfg.seg_scales),
            "msf_s": t_msf, "crf_s": t_crf, "argmax_s": t_arg}


def run(args: argparse.Namespace) -> dict:
    if args.seg_iters < 1 or args.seg_images < 1:
        raise UserError("--seg_iters and --seg_images must be >= 1")
    root = ensure_toy_voc(args.voc12_root) or args.voc12_root
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        (Path(tmp) / "labels").mkdir()
        tr = measure_train(args.seg_config, str(root), args.seg_iters, Path(tmp))
    inf = measure_infer(args.seg_config, str(root), args.seg_images)
    n = inf["images"]
    with_crf = inf["msf_s"] + inf["crf_s"] + inf["argmax_s"]
    without = inf["msf_s"] + inf["argmax_s"]
    res = {"train_images_per_s": tr["images_per_s"],
           "infer_images_per_s (crf)": n / with_crf,
           "infer_images_per_s (no crf)": n / without,
           "crf_share": inf["crf_s"] / with_crf,
           "train": tr, "infer": inf}
    steps = f"{inf['passes']} passes"
    rows = [[f"training step (batch {tr['batch']}, crop {tr['crop']})", tr["images"],
             tr["seconds"], tr["images_per_s"], "-"],
            [f"inference: {steps} + CRF ({CRF_PARAMS['iters']} it.)", n, with_crf,
             n / with_crf, f"{100 * res['crf_share']:.0f} %"],
            [f"inference: {steps}, no CRF", n, without, n / without, "-"]]
    print_table(f"stage 3, {args.seg_config} ({tr['arch']} arch, random init, 1 process; "
                "training on PNG pseudo labels = the GT masks, in a temporary folder)",
                ["run", "images", "seconds", "images/s", "CRF share"], rows)
    return res
