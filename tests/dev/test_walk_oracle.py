"""tool.dev.walk_oracle: the GT boundary map by hand, and the table end to end on the toy set."""
from __future__ import annotations

import numpy as np
import torch

from data.voc import load_img_name_list, load_mask
from net.irn_net import IRNet
from tests.irn.cams import soft_cams
from tool.common.fileio import save_npy_dict
from tool.dev.walk_oracle import gt_boundary_edge, main


def test_gt_boundary_edge_by_hand():
    gt = np.zeros((8, 11), np.uint8)
    gt[:, 6:] = 3           # a vertical class border between columns 5 and 6: grid column 1
    gt[0, 10] = 255         # an ignore pixel: grid cell (0, 2)
    edge = gt_boundary_edge(gt, strength=0.5)
    expected = torch.zeros(1, 2, 3)  # ceil(8 / 4) x ceil(11 / 4)
    expected[0, :, 1] = 0.5
    expected[0, 0, 2] = 0.5
    torch.testing.assert_close(edge, expected)
    assert not gt_boundary_edge(np.full((5, 5), 7, np.uint8)).any()  # one label: no boundary


def test_table_on_the_toy_set(toy_voc, tmp_path, capsys):
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/val.txt")
    for n in names:
        save_npy_dict(tmp_path / "cams" / f"{n}.npy",
                      soft_cams(load_mask(toy_voc / "SegmentationClass" / f"{n}.png")))
    torch.manual_seed(0)
    weights = tmp_path / "irn.ckpt"
    torch.save({"model": IRNet("resnet18", backbone_width=0.25, crop_size=64).state_dict()},
               weights)
    table = main(["--voc12_root", str(toy_voc), "--cam_dir", str(tmp_path / "cams"),
                  "--infer_list", str(toy_voc / "ImageSets/Segmentation/val.txt"),
                  "--gt", str(toy_voc / "SegmentationClass"), "--irn_weights_name",
                  str(weights), "--irn_crop_size", "64", "--walk_steps", "0,2",
                  "--bg_thresholds", "0.3,0.5"])
    assert set(table["none"]) == {(-1, 0.3), (-1, 0.5)}
    assert set(table["irn"]) == set(table["gt"]) == {(t, bg) for t in (0, 2) for bg in (0.3, 0.5)}
    assert all(0 <= v <= 100 for k in table for v in table[k].values())
    out = capsys.readouterr().out
    assert "GT x 0.5 (oracle), 2^2 steps" in out and "none (CAMs on the grid)" in out
