"""Make the IR labels of stage 2 (METHOD.md 13.2): stage-1 CAM dicts -> label PNGs for IRN.

    python make_ir_labels.py --config configs/toy.yaml --cam_dir runs/toy/npy_sgc \
        --ir_label_out_dir runs/toy/ir_label

Labels every image of ``--train_list`` (train_aug) into ``<ir_label_out_dir>/<name>.png``:
0 = confident background, c = class c (1..20 on VOC, 1..80 on COCO: ``num_classes``), 255 =
uncertain. ``--irn_preset irn`` takes IRN's thresholds (0.30 / 0.05) instead of the default
plmix ones (0.40 / 0.10). Rerunning the same command skips the finished images; a folder
holding labels of other settings is refused unless ``--overwrite``.
"""
from __future__ import annotations

import sys

from tool.common.errors import cli_main
from tool.irn.presets import parse_stage2_args

OVERWRITE_HELP = ("delete the previous IR labels in --ir_label_out_dir first (needed when they "
                  "come from other settings: thresholds, CRF, CAM folder)")


def main(argv: list[str] | None = None) -> int:
    args = parse_stage2_args(sys.argv[1:] if argv is None else argv, __doc__, OVERWRITE_HELP)
    from tool.irn.make_labels import run

    return run(args)


if __name__ == "__main__":
    cli_main(main)
