"""Train IRN on the IR labels of the stage-1 CAMs (stage 2, METHOD.md 13.5).

    python train_irn.py --config configs/toy.yaml [--irn_num_epoches 3 --irn_batch_size 32 ...]

Makes the IR labels of ``--train_list`` first where ``--ir_label_out_dir`` lacks them (as
make_ir_labels.py, from ``--cam_dir``), then trains in ``--irn_session`` (default
``<session_name>/irn``: last.ckpt, best.ckpt = last.ckpt, metrics.csv, train.log) and, after
the last epoch, estimates the mean shift on ``--irn_mean_shift_list``. ``--resume`` continues
``<irn_session>/last.ckpt`` (or a given checkpoint) exactly; a folder that already holds a run
needs ``--resume`` or ``--overwrite``. ``--irn_preset irn`` takes IRN's values (METHOD.md 13.10).
"""
from __future__ import annotations

import sys

from tool.common.engine import resume_command
from tool.common.errors import cli_main
from tool.irn.presets import parse_stage2_args

OVERWRITE_HELP = ("start over in an IRN run folder that already holds a run (its last.ckpt, "
                  "best.ckpt and metrics.csv are deleted first; the IR labels stay)")
RESUME_HELP = "continue <irn_session>/last.ckpt, or the checkpoint given"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_stage2_args(argv, __doc__, OVERWRITE_HELP, RESUME_HELP)
    from tool.irn import train

    args.resume_command = resume_command("train_irn.py", argv)
    return train.run(args)


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]),
             resume_hint="rerun the same command with --resume to continue from last.ckpt")
