"""Train the CAM network with the MCL losses and the PL-Mix branch (stage 1).

    python train_mcl.py --config configs/toy.yaml [--max_epoches 12 --crf False ...]

Every config key is a flag of the same name; see configs/base.yaml. ``--resume`` continues
``<session_name>/last.ckpt`` (or a given checkpoint) exactly; a folder that already holds a run
needs ``--resume`` or ``--overwrite``.
"""
from __future__ import annotations

import sys

from tool.common.config import TRAIN_SECTIONS, parse_config_args
from tool.common.errors import cli_main

SECTIONS = TRAIN_SECTIONS


def _extra(p) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue <session_name>/last.ckpt, or the checkpoint given")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a session folder that already holds a run (its "
                        "last.ckpt, best.ckpt and metrics.csv are deleted first)")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_config_args(argv, SECTIONS, __doc__.splitlines()[0], "configs/toy.yaml", _extra)
    from tool.cam import train

    args.resume_command = train.resume_command("train_mcl.py", argv)
    return train.run(args)


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]),
             resume_hint="rerun the same command with --resume to continue from last.ckpt")
