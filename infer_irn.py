"""Stage-2 pseudo labels (METHOD.md 13.6): the random walk over IRN's edge map refines the CAMs.

    python infer_irn.py --config configs/toy.yaml --cam_dir runs/toy/npy_sgc \
        --irn_weights_name runs/toy/irn/last.ckpt --sem_seg_out_dir runs/toy/sem_seg

Writes ``<sem_seg_out_dir>_png/<name>.png`` for every image of ``--infer_list`` and, with
``--soft_output 1``, ``<sem_seg_out_dir>/<name>.npy`` (MuSCLe's flag names and layout). The IRN
checkpoint is train_irn.py's or IRN's/MuSCLe's released file. ``--irn_preset irn`` takes IRN's
beta 10, exp_times 8, bg_thres 0.25 instead of MuSCLe's 8, 6, 0.35. Rerunning the same command
skips the finished images; folders holding labels of other settings are refused unless
``--overwrite``. Under torchrun each process takes every N-th image.
"""
from __future__ import annotations

import sys

from tool.common.errors import cli_main
from tool.irn.presets import parse_stage2_args

OVERWRITE_HELP = ("delete the previous pseudo labels in the output folders first (needed when "
                  "they come from other settings: IRN weights, beta, exp_times, ...)")


def main(argv: list[str] | None = None) -> int:
    args = parse_stage2_args(sys.argv[1:] if argv is None else argv, __doc__, OVERWRITE_HELP)
    from tool.irn.infer import run

    return run(args)


if __name__ == "__main__":
    cli_main(main)
