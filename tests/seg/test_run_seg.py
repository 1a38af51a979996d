"""run_seg.sh with a stand-in interpreter that records each step's command line (the config
lookup runs for real): the walk over train_list, training, inference, PNG evaluation."""
from __future__ import annotations

from tests.utils import run_script_steps


def test_run_seg_calls_the_four_steps(tmp_path):
    calls = run_script_steps("run_seg.sh", ["--seg_lr", "0.002"], tmp_path)
    assert [c.split()[0] for c in calls] == ["infer_irn.py", "train_seg.py", "infer_seg.py",
                                             "eval_cam.py"]
    walk, train, infer, ev = calls
    assert "train_aug.txt" in walk and "--cam_dir runs/toy/infer_train/npy_sgc" in walk
    assert "--sem_seg_out_dir runs/toy/sem_seg_train" in walk and "--seg_lr" not in walk
    # the toy config trains on PNG pseudo labels: the walk's _png folder
    assert "--mask_root runs/toy/sem_seg_train_png" in train and train.endswith("--seg_lr 0.002")
    assert infer.endswith("--seg_lr 0.002")
    assert "--predict_dir runs/toy/seg/pred" in ev and "--type png" in ev and "val.txt" in ev


def test_run_scripts_pass_the_class_count_to_every_step(tmp_path):
    """``--num_classes 81`` (COCO), or a COCO config chosen with ``CONFIG=``, reaches the steps
    that get resolved values instead of "$@" (the extra walk or CAM inference) and the
    evaluation, whose flags are its own."""
    for i, (argv, env) in enumerate([(["--num_classes", "81"], None),
                                     ([], {"CONFIG": "configs/toy_coco.yaml"})]):
        for script in ("run_refine.sh", "run_seg.sh"):
            (tmp_path / f"{i}{script}").mkdir()
            for c in run_script_steps(script, argv, tmp_path / f"{i}{script}", env):
                # the evaluation has no config: the count is given; other steps read the
                # config, or get the count with the resolved values
                given = "--num_classes 81" in c
                assert given or (env and "--config configs/toy_coco.yaml" in c), c
                assert given or not c.startswith("eval_cam.py"), c
