"""Segmentation predictions of a list with a trained stage-3 network (METHOD.md 14.6).

    python infer_seg.py --config configs/toy.yaml [--seg_weights runs/toy/seg/last.ckpt]

For every image of ``--seg_infer_list`` (VOC val by default): 6 scales x flip, the mean of the
softmax maps, the released dense CRF (``--seg_crf False`` skips it), the argmax, written as
``<out_seg>/<name>.png`` (VOC palette; ``--seg_label_png gray`` for MuSCLe's grey files).
``--test_submission DIR`` also writes the VOC test server's layout
(``DIR/results/VOC2012/Segmentation/comp6_test_cls/<name>.png``). Evaluate with
``eval_cam.py --type png --predict_dir <out_seg>``. Rerunning skips finished images; a folder
of other settings is refused unless ``--overwrite``. Shards under torchrun.
"""
from __future__ import annotations

import sys

from tool.common.config import SEG_SECTIONS, parse_entry_args
from tool.common.errors import cli_main

OVERWRITE_HELP = ("delete the previous predictions in --out_seg (and --test_submission) "
                  "first (needed when they come from other settings or weights)")


def main(argv: list[str] | None = None) -> int:
    args = parse_entry_args(sys.argv[1:] if argv is None else argv, SEG_SECTIONS, __doc__,
                            OVERWRITE_HELP)
    from tool.seg.infer import run

    return run(args)


if __name__ == "__main__":
    cli_main(main)
