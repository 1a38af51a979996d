"""Where do stage 2's pseudo labels lose or gain against the CAMs? The random walk of one list
under three boundary maps, side by side (METHOD.md 13.6; README, Stage 2):

- ``none``: the CAMs on the edge grid, no boundary and no walk (what the grid, the global-max
  normalisation and the constant background cost against the CAM evaluation);
- ``irn``: IRN's edge map (``--irn_weights_name``), as ``infer_irn.py`` walks;
- ``gt``: the GT class boundaries at ``--oracle_strength``, an upper bound for what a better
  edge map could give with the same CAMs and the same walk.

    python -m tool.dev.walk_oracle --config configs/toy.yaml --cam_dir runs/demo/npy_sgc \
        --irn_weights_name runs/demo/refine/irn/last.ckpt --infer_list .../val.txt

Prints the pseudo-label mIoU for each boundary map, ``--walk_steps`` (exp_times values) and
``--bg_thresholds``; returns the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.voc import image_path, load_img_name_list, load_mask
from tool.common.config import parse_config_args
from tool.common.errors import cli_main
from tool.eval.evaluation import check_cam_dict, confusion_png, load_cam_dict, miou_from_confusion
from tool.irn.infer import image_pair, load_irn
from tool.irn.presets import IRN_SECTIONS
from tool.irn.random_walk import cams_on_grid, propagate_to_edge, rw_to_labels

STRIDE = 4  # the edge grid's stride (METHOD.md 13.6.1)


def gt_boundary_edge(gt: np.ndarray, strength: float = 0.5) -> torch.Tensor:
    """(1, h, w) boundary map on the stride-4 grid of a label map gt (H, W): ``strength``
    where the 4 x 4 cell holds an ignore pixel or two 4-neighbours with different labels."""
    g = torch.from_numpy(np.asarray(gt, np.int64))
    H, W = g.shape
    b = g == 255
    dy, dx = g[1:] != g[:-1], g[:, 1:] != g[:, :-1]
    b[1:] |= dy
    b[:-1] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    h, w = -(-H // STRIDE), -(-W // STRIDE)
    cells = F.pad(b.float()[None, None], (0, STRIDE * w - W, 0, STRIDE * h - H))
    return F.max_pool2d(cells, STRIDE)[0] * strength


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def walk_table(args: argparse.Namespace, steps: list[int], bgs: list[float],
               strength: float) -> dict[str, dict[tuple[int, float], float]]:
    """{boundary map: {(exp_times, bg_thres): mIoU}} over ``args.infer_list`` ("none" has
    exp_times -1 only)."""
    device = torch.device("cpu")
    model = load_irn(args, device)
    conf: dict[str, dict[tuple[int, float], np.ndarray]] = {"none": {}, "irn": {}, "gt": {}}

    def add(kind: str, key: tuple[int, float], label: np.ndarray, gt: np.ndarray) -> None:
        c = confusion_png(label, gt)
        conf[kind][key] = conf[kind][key] + c if key in conf[kind] else c

    for name in load_img_name_list(args.infer_list):
        gt = load_mask(Path(args.gt) / f"{name}.png")
        size = gt.shape
        cam_path = Path(args.cam_dir) / f"{name}.npy"
        cams = check_cam_dict(load_cam_dict(cam_path), size, str(cam_path))
        keys = sorted(cams)
        with torch.no_grad():
            edge, _ = model.edge_displacement(image_pair(image_path(args.voc12_root, name),
                                                         device))
            grid_cams = cams_on_grid(cams, size, tuple(edge.shape[1:]), device, keys)
            for bg in bgs:
                add("none", (-1, bg), rw_to_labels(grid_cams[:, None], size, bg, keys)[0], gt)
            for kind, e in (("irn", edge), ("gt", gt_boundary_edge(gt, strength))):
                for t in steps:
                    rw = propagate_to_edge(grid_cams, e, args.beta, t, args.infer_radius,
                                           "sparse")
                    for bg in bgs:
                        add(kind, (t, bg), rw_to_labels(rw, size, bg, keys)[0], gt)
    return {k: {key: miou_from_confusion(c[0]) for key, c in v.items()} for k, v in conf.items()}


def main(argv: list[str] | None = None) -> dict:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--walk_steps", default="0,3,6", help="exp_times values (2^t steps)")
        p.add_argument("--bg_thresholds", default="0.25,0.35,0.45",
                       help="sem_seg_bg_thres values")
        p.add_argument("--oracle_strength", type=float, default=0.5,
                       help="boundary probability of the GT boundary map")

    args = parse_config_args(sys.argv[1:] if argv is None else argv, IRN_SECTIONS,
                             __doc__.splitlines()[0], "configs/toy.yaml", extra)
    steps = [int(t) for t in _floats(args.walk_steps)]
    bgs = _floats(args.bg_thresholds)
    table = walk_table(args, steps, bgs, args.oracle_strength)
    print(f"pseudo-label mIoU on {args.infer_list} (beta {args.beta:g}, radius "
          f"{args.infer_radius}); columns: sem_seg_bg_thres")
    print(f"{'boundary map':32s}" + "".join(f"{bg:>8.2f}" for bg in bgs))
    for kind, label in (("none", "none (CAMs on the grid)"), ("irn", "IRN"),
                        ("gt", f"GT x {args.oracle_strength:g} (oracle)")):
        for t in (-1,) if kind == "none" else steps:
            head = label if t < 0 else f"{label}, 2^{t} steps"
            print(f"{head:32s}" + "".join(f"{table[kind][(t, bg)]:8.2f}" for bg in bgs))
    return table


if __name__ == "__main__":
    cli_main(main)
