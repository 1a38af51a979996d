"""The hand-off contract with MuSCLe's infer_irn.py (METHOD.md 6.6), read back by a small reader
written from that description: our npy files must give IRN what it expects."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tool.cam.msf import present_dict
from tool.common.fileio import save_npy_dict


def irn_read_cams(path, size_hw):
    """What infer_irn.py does with one file: 20 x H x W float32, missing keys stay 0."""
    d = np.load(path, allow_pickle=True).item()
    cams = np.zeros((20, *size_hw), np.float32)
    for k, v in d.items():
        cams[k] = v
    return d, cams


def irn_labels(cams, bg=0.35):
    """Stride-4 resize and back (the random walk itself is the identity here), division by the
    global max, a constant background channel, argmax: 0 = background, c + 1 = class c."""
    h, w = cams.shape[1:]
    x = torch.from_numpy(cams)[None]
    small = F.interpolate(x, size=((h + 3) // 4, (w + 3) // 4), mode="bilinear",
                          align_corners=False)
    up = F.interpolate(small, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :h, :w]
    up = up / (up.max() + 1e-5)
    full = torch.cat([torch.full((1, h, w), bg), up])
    return full.argmax(0).numpy()


def test_our_npy_is_what_irn_reads(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 75, 101  # odd original size, as VOC images often are
    label = np.zeros(20, np.float32)
    label[[4, 14]] = 1
    summed = rng.random((20, h, w)).astype(np.float32) * 8  # a sum over 8 passes
    summed[14, 20:50, 30:80] += 10
    save_npy_dict(tmp_path / "2007_000032.npy", present_dict(summed, label))

    d, cams = irn_read_cams(tmp_path / "2007_000032.npy", (h, w))
    assert sorted(d) == [4, 14]  # 0-based foreground keys, present classes only
    assert all(isinstance(k, int) for k in d)
    assert all(v.dtype == np.float32 and v.shape == (h, w) for v in d.values())
    assert all(v.max() <= 1 + 1e-6 and v.max() > 0.99 for v in d.values())  # normalised
    assert not cams[[c for c in range(20) if c not in (4, 14)]].any()
    labels = irn_labels(cams)
    assert set(np.unique(labels)) <= {0, 5, 15}
    assert (labels[25:45, 40:70] == 15).mean() > 0.9
