"""Evaluate CAM dicts (npy) or label maps (png) against VOC masks: mIoU, curve, logs.

Flags follow the MuSCLe/SEAM evaluator (``--list --predict_dir --gt_dir --type --t --curve
--comment --logfile``) plus ``--t_range --json --plot --num_workers``. The last stdout line
is always ``mIoU: XX.XX% at t=T``; for ``--type png``, which has no threshold, T is ``-``.

    python eval_cam.py --list train.txt --predict_dir out_sgc --gt_dir SegmentationClass --curve
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from data.voc import load_img_name_list
from tool import eval_report as report
from tool import evaluation as ev
from tool.config import str2bool
from tool.errors import UserError, cli_main
from tool.fileio import save_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", required=True, help="image list (plain names or VOC aug lines)")
    p.add_argument("--predict_dir", required=True, help="folder of <name>.npy or <name>.png")
    p.add_argument("--gt_dir", required=True, help="folder of <name>.png ground-truth masks")
    p.add_argument("--type", choices=["npy", "png"], default="npy")
    p.add_argument("--t", type=float, default=None, help="background threshold (npy)")
    p.add_argument("--curve", type=str2bool, nargs="?", const=True, default=False,
                   help=f"sweep thresholds (--t_range, default {ev.DEFAULT_T_RANGE}); "
                        "also --curve True/False")
    p.add_argument("--t_range", default=None, metavar="START:STOP:STEP",
                   help="curve thresholds, STOP exclusive (implies --curve)")
    p.add_argument("--comment", default="", help="free text for the log record")
    p.add_argument("--logfile", default=None, help="append a record of this run to this file")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG of mIoU vs threshold")
    p.add_argument("--num_workers", type=int, default=ev.default_num_workers(),
                   help="processes (0 or 1 = this process)")
    return p


def thresholds_from_args(args: argparse.Namespace) -> Sequence[float] | None:
    """None for png; the --t value or the curve range for npy."""
    curve = args.curve or args.t_range is not None
    if args.type == "png":
        if curve or args.t is not None:
            print("note: --t/--curve/--t_range do not apply to --type png", file=sys.stderr)
        return None
    if curve and args.t is not None:
        raise UserError("give either --t or --curve/--t_range, not both")
    if curve:
        return ev.parse_t_range(args.t_range or ev.DEFAULT_T_RANGE)
    if args.t is None:
        raise UserError("--type npy needs a background threshold: give --t T or --curve")
    if not math.isfinite(args.t):
        raise UserError(f"--t must be a finite number, got {args.t}")
    return [args.t]


def main(argv: list[str] | None = None) -> ev.CurveResult:
    """Run the evaluator; returns the result for in-process callers (tool/demo.py)."""
    args = build_parser().parse_args(argv)
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {args.num_workers}")
    thresholds = thresholds_from_args(args)
    names = load_img_name_list(args.list)
    res = ev.evaluate(names, args.predict_dir, args.gt_dir, args.type, thresholds,
                      args.num_workers)
    if args.json:
        save_text(args.json, json.dumps(res.to_json(), indent=2) + "\n")
    if args.plot:
        report.save_curve_plot(res, args.plot)
    if args.logfile:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        report.append_log(args.logfile, report.log_record(res, args.comment, vars(args), when))
    if len(res.miou) > 1:
        print("\n".join(report.curve_lines(res)))
    print(report.per_class_table(res))
    print(report.result_line(res))
    return res


if __name__ == "__main__":
    cli_main(main)
