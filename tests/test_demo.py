"""The demo and the ablation run end to end on the tiny config and write what they promise."""
from __future__ import annotations

import json

from tool import ablation, demo


def test_demo_writes_summary_and_outputs(tiny_config, toy_voc, tmp_path, capsys):
    out = tmp_path / "demo"
    s = demo.main(["--config", str(tiny_config), "--voc12_root", str(toy_voc),
                   "--out", str(out), "--max_epoches", "1"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved == s
    assert {"val_miou_trained", "val_miou_untrained", "threshold", "seconds", "npy_dir", "list",
            "gt_dir"} <= set(s)
    assert 0 <= s["val_miou_untrained"] <= 100 and 0 <= s["val_miou_trained"] <= 100
    for f in ("metrics.csv", "last.ckpt", "eval.json", "curve.png", "untrained/eval.json"):
        assert (out / f).exists(), f
    names = (toy_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    for sub in ("npy_sgc", "png", "vis"):
        assert sorted(p.stem for p in (out / sub).iterdir()) == sorted(names), sub
    last = capsys.readouterr().out.strip().splitlines()
    assert "trained network" in last[-1] and f"{s['val_miou_trained']:.2f}%" in last[-1]
    assert "untrained network" in last[-2]


def test_ablation_table(tiny_config, toy_voc, tmp_path):
    res = ablation.main(["--config", str(tiny_config), "--voc12_root", str(toy_voc),
                         "--seeds", "0", "--out", str(tmp_path / "abl")])
    assert set(res) == {"MCL", "MCL+PL-Mix"} and all(len(v) == 1 for v in res.values())
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| seed |" in md and "mean ± std" in md
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 0
