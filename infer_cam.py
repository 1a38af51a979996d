"""Multi-scale CAM inference: SGC hand-off npy files, optional raw CAMs, label PNGs, overlays.

    python infer_cam.py --config configs/toy.yaml --weights runs/toy/best.ckpt \
        --infer_list data/toy_voc/ImageSets/Segmentation/val.txt --out_png runs/toy/png

``--camT`` defaults to the threshold stored in the checkpoint (selected during training).
Rerunning the same command skips the images whose outputs exist.
"""
from __future__ import annotations

import sys

from tool.common.config import parse_config_args
from tool.common.errors import UserError, cli_main

SECTIONS = ["run", "data", "model", "plmix", "eval", "infer"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_config_args(argv, SECTIONS, __doc__.splitlines()[0], "configs/toy.yaml")
    from net.weights import load_cam_weights
    from tool.cam import infer
    from tool.cam.build import build_model
    from tool.common.checkpoint import read_checkpoint
    from tool.common.runtime import setup_logging

    setup_logging()  # before loading: the log names the keys a released checkpoint ignores
    if not args.weights:
        raise UserError("--weights is required: the trained checkpoint (e.g. runs/demo/best.ckpt)")
    # the trained checkpoint holds every weight: no ImageNet file is needed here
    weights, args.weights, args.backbone_weights = args.weights, None, None
    model = build_model(args, device="cpu")
    ckpt = read_checkpoint(weights)
    load_cam_weights(model, weights, checkpoint=ckpt)
    ckpt_camT = ckpt.get("camT") if isinstance(ckpt, dict) else None
    explicit = any(a == "--camT" or a.startswith("--camT=") for a in argv)
    camT = args.camT if explicit or ckpt_camT is None else float(ckpt_camT)
    return infer.run(args, model, camT)


if __name__ == "__main__":
    cli_main(main)
