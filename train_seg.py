"""Train the segmentation network on the stage-2 pseudo labels (stage 3, METHOD.md 14.3-14.5).

    python train_seg.py --config configs/toy.yaml [--seg_arch muscle_b7 --mask_type soft ...]

Trains ``--seg_arch`` (``muscle_b7``: MuSCLe's EfficientNet-B7 network with BEACON, the
default; ``deeplabv3_resnet101``: the comparator, with ``--seg_optimizer sgd --seg_lr_policy
poly``; ``toy``) on the pseudo labels of ``--seg_train_list`` in ``--mask_root`` (soft npy or
PNG, ``--mask_type``), validating on ``--seg_val_list`` after every epoch, into
``--seg_session`` (last.ckpt: the reported model; best.ckpt; metrics.csv; train.log).
``--resume`` continues ``<seg_session>/last.ckpt`` (or a given checkpoint) exactly; a folder
that already holds a run needs ``--resume`` or ``--overwrite``.
"""
from __future__ import annotations

import sys

from tool.common.config import SEG_SECTIONS, parse_entry_args
from tool.common.engine import resume_command
from tool.common.errors import cli_main

OVERWRITE_HELP = ("start over in a segmentation run folder that already holds a run (its "
                  "last.ckpt, best.ckpt and metrics.csv are deleted first)")
RESUME_HELP = "continue <seg_session>/last.ckpt, or the checkpoint given"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_entry_args(argv, SEG_SECTIONS, __doc__, OVERWRITE_HELP, RESUME_HELP)
    from tool.seg import train

    args.resume_command = resume_command("train_seg.py", argv)
    return train.run(args)


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]),
             resume_hint="rerun the same command with --resume to continue from last.ckpt")
