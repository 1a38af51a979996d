"""Multi-scale CAM inference: SGC hand-off npy files, optional raw CAMs, label PNGs, overlays.

    python infer_cam.py --config configs/toy.yaml --weights runs/toy/best.ckpt \
        --infer_list data/toy_voc/ImageSets/Segmentation/val.txt --out_png runs/toy/png

``--camT`` defaults to the threshold stored in the checkpoint (selected during training).
Rerunning the same command skips the images whose outputs exist; output folders holding the
outputs of other settings (checkpoint, scales, camT, CRF) are refused unless ``--overwrite``.
"""
from __future__ import annotations

import sys

from tool.common.config import INFER_SECTIONS, parse_config_args
from tool.common.errors import cli_main

SECTIONS = INFER_SECTIONS


def _extra(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="delete the previous outputs in the output folders first (needed when "
                        "they come from other settings: another checkpoint, scales, camT, CRF)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_config_args(argv, SECTIONS, __doc__.splitlines()[0], "configs/toy.yaml", _extra)
    from tool.cam import infer

    return infer.run_checkpoint(args)


if __name__ == "__main__":
    cli_main(main)
