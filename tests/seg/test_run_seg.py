"""run_seg.sh with a stand-in interpreter that records each step's command line (the config
lookup runs for real): the walk over train_list, training, inference, PNG evaluation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_seg_calls_the_four_steps(tmp_path):
    log = tmp_path / "calls.txt"
    py = tmp_path / "py"
    py.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -m ]; then exec {sys.executable} "$@"; fi\n'
                  f'echo "$@" >> {log}\n')
    py.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PY": str(py), "NPROC": "1"}
    res = subprocess.run(["bash", str(ROOT / "run_seg.sh"), "--seg_lr", "0.002"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["infer_irn.py", "train_seg.py", "infer_seg.py",
                                             "eval_cam.py"]
    walk, train, infer, ev = calls
    assert "train_aug.txt" in walk and "--cam_dir runs/toy/infer_train/npy_sgc" in walk
    assert "--sem_seg_out_dir runs/toy/sem_seg_train" in walk and "--seg_lr" not in walk
    # the toy config trains on PNG pseudo labels: the walk's _png folder
    assert "--mask_root runs/toy/sem_seg_train_png" in train and train.endswith("--seg_lr 0.002")
    assert infer.endswith("--seg_lr 0.002")
    assert "--predict_dir runs/toy/seg/pred" in ev and "--type png" in ev and "val.txt" in ev
