"""Evaluate CAM dicts (npy) or label maps (png) against VOC or COCO masks: mIoU, curve, logs.

Flags follow the MuSCLe/SEAM evaluator (``--list --predict_dir --gt_dir --type --t --curve
--comment --logfile``) plus ``--t_range --json --plot --num_workers --num_classes`` (21 = PASCAL
VOC 2012, the default; 81 = MS COCO 2014: mIoU over 81 classes, COCO names in the table). The
last stdout line is always ``mIoU: XX.XX% at t=T``; for ``--type png``, which has no threshold,
T is ``-``.

    python eval_cam.py --list train.txt --predict_dir out_sgc --gt_dir SegmentationClass --curve

``--compare DIR_A DIR_B`` (instead of ``--predict_dir``) is a paired comparison of two folders
(tool/eval/paired.py: paired t-test on per-image mIoU, bootstrap CI of the mIoU difference); its
last line is ``paired: A-B mIoU diff +X.XX pp, 95% CI [lo, hi], p=P (n images)``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from data.description import DESCRIPTIONS
from data.voc import NUM_CLASSES, load_img_name_list
from tool.common.config import str2bool
from tool.common.errors import UserError, cli_main
from tool.common.fileio import save_text
from tool.eval import evaluation as ev
from tool.eval import paired, report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", required=True, help="image list (plain names or VOC aug lines)")
    p.add_argument("--predict_dir", default=None,
                   help="folder of <name>.npy or <name>.png (required unless --compare)")
    p.add_argument("--compare", nargs=2, default=None, metavar=("DIR_A", "DIR_B"),
                   help="paired comparison of two prediction folders instead of --predict_dir")
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
    p.add_argument("--num_classes", type=int, choices=sorted(DESCRIPTIONS), default=NUM_CLASSES,
                   help="classes with background: " + ", ".join(
                       f"{n} = {d.title}" for n, d in sorted(DESCRIPTIONS.items()))
                   + f" (default {NUM_CLASSES})")
    p.add_argument("--t_b", type=float, default=None,
                   help="--compare, npy: threshold of DIR_B (default: --t)")
    p.add_argument("--resamples", type=int, default=paired.DEFAULT_RESAMPLES,
                   help="--compare: bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="--compare: bootstrap seed")
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


def compare_thresholds(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(t_a, t_b) for --compare: --t for both, --t_b overriding B; (None, None) for png."""
    if args.curve or args.t_range is not None:
        raise UserError("--curve/--t_range do not apply to --compare: each folder is scored at "
                        "one threshold (--t, and --t_b for DIR_B)")
    if args.plot:
        raise UserError("--plot needs a threshold curve, which --compare does not compute")
    if args.type == "png":
        if args.t is not None or args.t_b is not None:
            print("note: --t/--t_b do not apply to --type png", file=sys.stderr)
        return None, None
    if args.t is None:
        raise UserError("--compare with --type npy needs --t T (and --t_b T for a different "
                        "threshold of DIR_B)")
    t_b = args.t if args.t_b is None else args.t_b
    for flag, v in (("--t", args.t), ("--t_b", t_b)):
        if not math.isfinite(v):
            raise UserError(f"{flag} must be a finite number, got {v}")
    return args.t, t_b


def main_compare(args: argparse.Namespace) -> paired.PairedResult:
    """``--compare DIR_A DIR_B``: the paired test, printed and optionally saved/logged."""
    t_a, t_b = compare_thresholds(args)
    names = load_img_name_list(args.list)
    res = paired.compare_folders(names, args.compare[0], args.compare[1], args.gt_dir,
                                 args.type, t_a, t_b, args.resamples, args.seed,
                                 args.num_workers, num_classes=args.num_classes)
    lines = res.lines()
    if args.json:
        thr = [None, None] if args.type == "png" else [[t_a], [t_b]]
        out = {key: ev.CurveResult.from_confusion(conf[None], t).to_json()  # as without --compare
               for key, conf, t in zip("ab", (res.confusion_a, res.confusion_b), thr)}
        out["paired"] = res.to_json()
        save_text(args.json, json.dumps(out, indent=2, allow_nan=False) + "\n")
    if args.logfile:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        record = [f"{when}\t{args.comment}", f"args: {vars(args)}"] + lines + ["=" * 40]
        report.append_log(args.logfile, "\n".join(record) + "\n")
    print("\n".join(lines))
    return res


def main(argv: list[str] | None = None) -> ev.CurveResult | paired.PairedResult:
    """Run the evaluator; returns the result for in-process callers (tool/dev/demo.py)."""
    args = build_parser().parse_args(argv)
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {args.num_workers}")
    if (args.predict_dir is None) == (args.compare is None):
        raise UserError("give either --predict_dir DIR or --compare DIR_A DIR_B (exactly one)")
    if args.compare is not None:
        return main_compare(args)
    if args.t_b is not None:
        raise UserError("--t_b applies only with --compare")
    thresholds = thresholds_from_args(args)
    names = load_img_name_list(args.list)
    res = ev.evaluate(names, args.predict_dir, args.gt_dir, args.type, thresholds,
                      args.num_workers, num_classes=args.num_classes)
    report.save_result(res, args.json, args.plot, args.logfile, args.comment, vars(args))
    print("\n".join(report.printed_lines(res)))
    return res


if __name__ == "__main__":
    cli_main(main)
