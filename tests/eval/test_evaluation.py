"""tool/eval/evaluation.py and eval_cam.py against a brute-force copy of the reference semantics
(``reference_counts`` in tool/dev/bench_eval.py)."""
from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_cam
from data.voc import CAT_NAMES, save_label_png
from tool.common.errors import UserError, cli_main
from tool.common.fileio import save_npy_dict
from tool.dev import bench_eval
from tool.eval import evaluation as ev

REPO = Path(__file__).resolve().parents[2]
CURVE = [i / 100 for i in range(-5, 60)]  # includes negative thresholds


# ---------------------------------------------------------------- brute force reference


def ref_counts(preds: list, gts: list[np.ndarray], kind: str, t: float | None):
    """Per-class (TP, T, P) exactly as do_python_eval: explicit tensor, argmax, masks (the
    benchmark's reference evaluator, independent of tool/eval/evaluation.py)."""
    assert all(isinstance(p, dict) == (kind == "npy") for p in preds)
    return bench_eval.reference_counts(zip(preds, gts), t)


def ref_miou(preds, gts, kind, t=None) -> float:
    return bench_eval.reference_miou(*ref_counts(preds, gts, kind, t))


def counts_from_conf(conf: np.ndarray):
    sq = conf[:, :21]
    return np.diagonal(sq).copy(), conf.sum(1), sq.sum(0)


# ---------------------------------------------------------------- random data


def random_case(rng: np.random.Generator, n: int = 8, kind: str = "npy"):
    """Images of varied sizes; GT uses classes 0..12 only (13..20 never appear anywhere)."""
    preds, gts = [], []
    grid = np.float32(np.arange(-5, 61) / 100)  # exact float32 images of the thresholds
    for i in range(n):
        h, w = rng.integers(3, 14, size=2)
        gt = rng.integers(0, 13, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        gts.append(gt)
        if kind == "png":
            pred = rng.integers(0, 13, size=(h, w)).astype(np.uint8)
            pred[rng.random((h, w)) < 0.1] = 255
            pred[rng.random((h, w)) < 0.05] = 37  # not a class: counts in no P, in T
            preds.append(pred)
            continue
        # image 0: no class at all; image 2: all 20 classes, so the maximum can be negative
        n_keys = {0: 0, 2: 20}.get(i, rng.integers(1, 5))
        keys = rng.choice(20 if i == 2 else 12, size=n_keys, replace=False)
        d = {}
        for k in keys:
            # negative values too; image 2 mostly negative, ties only with t < 0
            m = rng.normal(-0.4 if i == 2 else 0.3, 0.3, size=(h, w))
            on_grid = rng.random((h, w)) < 0.5  # exact ties with thresholds and between maps
            m[on_grid] = rng.choice(grid[:5] if i == 2 else grid, size=int(on_grid.sum()))
            d[int(k)] = m.astype(np.float64 if k % 2 else np.float32)
        if i == 1:  # an image whose present maps are all negative somewhere
            d = {3: -np.abs(rng.normal(size=(h, w))).astype(np.float32)}
        preds.append(d)
    return preds, gts


def write_case(root: Path, preds, gts, kind: str) -> tuple[list[str], Path, Path]:
    names = [f"2007_{i:06d}" for i in range(len(gts))]
    pdir, gdir = root / "pred", root / "gt"
    for name, pred, gt in zip(names, preds, gts):
        save_label_png(gt, gdir / f"{name}.png")
        if kind == "npy":
            save_npy_dict(pdir / f"{name}.npy", pred)
        else:
            save_label_png(pred, pdir / f"{name}.png")
    return names, pdir, gdir


# ---------------------------------------------------------------- one-pass == brute force


def test_confusion_npy_matches_bruteforce_every_threshold():
    rng = np.random.default_rng(0)
    preds, gts = random_case(rng, n=10)
    conf = sum(ev.confusion_npy(p, g, CURVE) for p, g in zip(preds, gts))
    assert conf.shape == (len(CURVE), 21, 21) and conf.dtype == np.int64
    for j, t in enumerate(CURVE):
        for got, want in zip(counts_from_conf(conf[j]), ref_counts(preds, gts, "npy", t)):
            np.testing.assert_array_equal(got, want)
        assert abs(ev.miou_from_confusion(conf[j]) - ref_miou(preds, gts, "npy", t)) < 1e-6
    np.testing.assert_allclose(ev.miou_curve(conf),
                               [ref_miou(preds, gts, "npy", t) for t in CURVE], atol=1e-6)


def test_ties_at_threshold_go_to_background_and_negative_maps_to_absent_class():
    gt = np.array([[0, 1, 2, 255]], np.uint8)
    d = {0: np.float32([[0.3, 0.3, 0.1, 0.9]]), 1: np.float32([[0.3, 0.2, 0.3, 0.9]])}
    conf = ev.confusion_npy(d, gt, [0.3, 0.29])
    # t=0.3: ties with 0.3 -> background; t=0.29: aeroplane wins its tie with bicycle
    assert conf[0, 0, 0] == 1 and conf[0, 1, 0] == 1 and conf[0, 2, 0] == 1
    assert conf[1, 0, 1] == 1 and conf[1, 1, 1] == 1 and conf[1, 2, 2] == 1
    assert conf.sum() == 6  # the 255 pixel is counted nowhere
    # a float64 map is compared in float32: just above float32(0.3) in float64 is a tie
    above = np.nextafter(np.float64(np.float32(0.3)), 1.0)
    conf = ev.confusion_npy({0: np.full((1, 4), above)}, gt, [0.3])
    assert conf[0, :, 0].sum() == 3
    neg = {5: np.full((1, 4), -0.5, np.float32)}
    conf = ev.confusion_npy(neg, gt, [-0.1, -0.6])
    assert conf[0, :, 1].sum() == 3  # absent class 0 (a zero channel) beats -0.5 and t=-0.1
    assert conf[1, :, 1].sum() == 3  # and still beats t=-0.6 since 0 > -0.5 > -0.6


def test_unsorted_thresholds_keep_their_order():
    rng = np.random.default_rng(1)
    preds, gts = random_case(rng, n=3)
    thr = np.array(CURVE)
    perm = rng.permutation(len(thr))
    a = sum(ev.confusion_npy(p, g, thr) for p, g in zip(preds, gts))
    b = sum(ev.confusion_npy(p, g, thr[perm]) for p, g in zip(preds, gts))
    np.testing.assert_array_equal(a[perm], b)


def test_confusion_png_matches_bruteforce():
    rng = np.random.default_rng(2)
    preds, gts = random_case(rng, n=6, kind="png")
    conf = sum(ev.confusion_png(p, g) for p, g in zip(preds, gts))
    assert conf.shape == (1, 21, 22)
    for got, want in zip(counts_from_conf(conf[0]), ref_counts(preds, gts, "png", None)):
        np.testing.assert_array_equal(got, want)
    assert abs(ev.miou_from_confusion(conf[0]) - ref_miou(preds, gts, "png")) < 1e-6


@pytest.mark.parametrize("kind,workers", [("npy", 0), ("npy", 2), ("png", 1)])
def test_evaluate_files_matches_bruteforce(tmp_path, kind, workers):
    rng = np.random.default_rng(3)
    preds, gts = random_case(rng, n=7, kind=kind)
    names, pdir, gdir = write_case(tmp_path, preds, gts, kind)
    res = ev.evaluate(names, pdir, gdir, kind, CURVE if kind == "npy" else None, workers)
    ts = CURVE if kind == "npy" else [None]
    want = [ref_miou(preds, gts, kind, t) for t in ts]
    np.testing.assert_allclose(res.miou, want, atol=1e-6)
    best = int(np.argmax(want))
    assert res.best_t == ts[best] and abs(res.best_miou - want[best]) < 1e-6
    tp, tt, pp = ref_counts(preds, gts, kind, ts[best])
    ious = {n: 100 * tp[i] / (tt[i] + pp[i] - tp[i] + 1e-10) for i, n in enumerate(CAT_NAMES)}
    assert res.per_class == pytest.approx(ious, abs=1e-6)
    assert res.per_class["tvmonitor"] == 0.0  # never present: counts as 0 in the mean


def test_default_curve_and_best_is_first_maximum():
    res = ev.CurveResult.from_confusion(np.zeros((3, 21, 21), np.int64), np.array([.1, .2, .3]))
    assert res.best_t == 0.1 and res.miou == [0.0, 0.0, 0.0]
    assert len(ev.parse_t_range(ev.DEFAULT_T_RANGE)) == 60
    js = res.to_json()
    assert set(js) == {"thresholds", "miou", "best", "per_class"}
    assert js["best"] == {"t": 0.1, "miou": 0.0} and list(js["per_class"]) == list(CAT_NAMES)


# ---------------------------------------------------------------- thresholds


def test_parse_t_range():
    assert ev.parse_t_range("0.00:0.60:0.01").tolist() == [i / 100 for i in range(60)]
    assert ev.parse_t_range("0:1:0.3").tolist() == [0.0, 0.3, 0.6, 0.9]
    assert ev.parse_t_range("0.1:0.35:0.05").tolist() == [0.1, 0.15, 0.2, 0.25, 0.3]
    assert ev.parse_t_range("-0.1:0.1:0.1").tolist() == [-0.1, 0.0]


@pytest.mark.parametrize("bad", ["a:b:c", "0:1", "0:1:0", "1:0:0.1", "nan:1:0.1", "0:1:1e-9"])
def test_parse_t_range_rejects(bad):
    with pytest.raises(UserError, match="--t_range"):
        ev.parse_t_range(bad)


# ---------------------------------------------------------------- bad inputs


def one_image(tmp_path: Path, pred: object, gt_shape=(4, 5), kind="npy"):
    gt = np.zeros(gt_shape, np.uint8)
    save_label_png(gt, tmp_path / "gt" / "a.png")
    if pred is not None:
        path = tmp_path / "pred" / f"a.{kind}"
        path.parent.mkdir(exist_ok=True)
        if isinstance(pred, bytes):
            path.write_bytes(pred)
        elif kind == "png":
            save_label_png(pred, path)
        else:
            np.save(path, pred, allow_pickle=True)
    return tmp_path / "pred", tmp_path / "gt"


@pytest.mark.parametrize("pred,kind,msg", [
    (None, "npy", "prediction not found"),
    ({0: np.zeros((4, 6))}, "npy", "is 4x6 but the ground truth is 4x5"),
    (np.zeros((20, 4, 5), np.float32), "npy", "is not a dict"),
    ({20: np.zeros((4, 5))}, "npy", "not a class index"),
    ({3: np.zeros((4, 5)), 20: np.zeros((4, 5))}, "npy",
     "dict key 20 is not a class index 0..19; keys look 1-based (1..20)"),
    ({0: np.zeros((4, 5)), 20: np.zeros((4, 5))}, "npy", "key 20 is not a class index 0..19"),
    ({"cat": np.zeros((4, 5))}, "npy", "not a class index"),
    ({0: np.zeros((2, 4, 5))}, "npy", "not a 2-D numeric array"),
    ({0: np.full((4, 5), np.nan)}, "npy", "NaN"),
    (b"garbage", "npy", "cannot read prediction"),
    (np.zeros((5, 5), np.uint8), "png", "prediction is 5x5 but the ground truth is 4x5"),
])
def test_bad_prediction_names_the_file(tmp_path, pred, kind, msg):
    pdir, gdir = one_image(tmp_path, pred, kind=kind)
    with pytest.raises(UserError, match=re.escape(msg)) as e:
        ev.evaluate(["a"], pdir, gdir, kind, [0.3], num_workers=0)
    assert str(pdir / f"a.{kind}") in str(e.value) and "\n" not in str(e.value)


def test_one_based_keys_are_refused_and_other_keys_scored(tmp_path):
    """Keys that are the GT's classes each one too high are a 1-based writer's: refused in one
    line naming the file and the keys. Any other key set, even one that misses the GT, is a
    valid dict and scored exactly as before."""
    gt = np.zeros((4, 5), np.uint8)
    gt[1:3, 1:3], gt[3, :] = 1, 15  # aeroplane (0-based 0) and person (0-based 14)
    gt[0, 0] = 255
    rng = np.random.default_rng(8)
    maps = [rng.random((4, 5)).astype(np.float32) for _ in range(2)]
    pdir, gdir = one_image(tmp_path, {1: maps[0], 15: maps[1]})
    save_label_png(gt, gdir / "a.png")
    with pytest.raises(UserError) as e:
        ev.evaluate(["a"], pdir, gdir, "npy", [0.3], num_workers=0)
    assert str(e.value) == (f"{pdir / 'a.npy'}: dict keys [1, 15] look 1-based: the ground "
                            "truth holds classes [0, 14] (0-based), each key one higher; the "
                            "hand-off format keys maps by 0-based foreground index 0..19, 0 = "
                            "aeroplane (METHOD.md 6)")
    for keys in [(0, 14), (2, 15), (14,), (1,), (5, 9)]:  # right, or wrong but not shifted
        pred = dict(zip(keys, maps))
        np.save(pdir / "a.npy", pred, allow_pickle=True)
        got = ev.evaluate(["a"], pdir, gdir, "npy", [0.3], num_workers=0).confusion
        want = counts_from_conf(got[0])
        ref = ref_counts([pred], [gt], "npy", 0.3)
        assert all(np.array_equal(a, b) for a, b in zip(want, ref)), keys


def test_bad_ground_truth_names_the_file(tmp_path):
    pdir, gdir = one_image(tmp_path, {0: np.zeros((4, 5))})
    with pytest.raises(UserError, match=r"mask not found: .*b\.png"):
        (pdir / "a.npy").rename(pdir / "b.npy")
        ev.evaluate(["b"], pdir, gdir, "npy", [0.3], num_workers=0)
    save_label_png(np.full((4, 5), 30, np.uint8), gdir / "a.png")
    (pdir / "b.npy").rename(pdir / "a.npy")
    with pytest.raises(UserError, match=re.escape(f"{gdir / 'a.png'}: ground-truth values "
                                                  "outside 0..20 and 255")):
        ev.evaluate(["a"], pdir, gdir, "npy", [0.3], num_workers=0)


def test_worker_error_reaches_the_caller(tmp_path):
    preds, gts = random_case(np.random.default_rng(4), n=4)
    names, pdir, gdir = write_case(tmp_path, preds, gts, "npy")
    (pdir / f"{names[2]}.npy").unlink()
    with pytest.raises(UserError, match=f"prediction not found: .*{names[2]}"):
        ev.evaluate(names, pdir, gdir, "npy", [0.3], num_workers=2)


def test_worker_bug_is_a_runtime_error_with_its_traceback(tmp_path, monkeypatch):
    """Not a UserError: the worker's traceback comes back as text (a value, like UserErrors,
    so the pool always shuts down normally); the workers are forked with the patch."""
    preds, gts = random_case(np.random.default_rng(4), n=4)
    names, pdir, gdir = write_case(tmp_path, preds, gts, "npy")
    real = ev._file_counts

    def buggy(name, *args):
        return 1 / 0 if name == names[1] else real(name, *args)

    monkeypatch.setattr(ev, "_file_counts", buggy)
    with pytest.raises(RuntimeError, match=r"(?s)a worker process failed:.*ZeroDivisionError"):
        ev.evaluate(names, pdir, gdir, "npy", [0.3], num_workers=2)
    assert multiprocessing.active_children() == []


# ---------------------------------------------------------------- CLI


@pytest.fixture
def dataset(tmp_path):
    preds, gts = random_case(np.random.default_rng(5), n=5)
    names, pdir, gdir = write_case(tmp_path, preds, gts, "npy")
    lst = tmp_path / "train.txt"  # the VOC aug list form
    lst.write_text("".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n"
                           for n in names))
    base = ["--list", str(lst), "--predict_dir", str(pdir), "--gt_dir", str(gdir),
            "--num_workers", "0"]
    return base, preds, gts, tmp_path


def run_cli(argv, capsys):
    """eval_cam as run from the shell: (exit code, stdout lines, stderr)."""
    code = 0
    try:
        cli_main(lambda: eval_cam.main(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


def test_cli_curve_json_plot_log(dataset, capsys):
    base, preds, gts, tmp = dataset
    want = [ref_miou(preds, gts, "npy", i / 100) for i in range(60)]
    best = int(np.argmax(want))
    argv = base + ["--curve", "True", "--json", str(tmp / "r.json"), "--plot",
                   str(tmp / "c.png"), "--logfile", str(tmp / "log.txt"), "--comment", "run A"]
    code, lines, _ = run_cli(argv, capsys)
    assert code == 0
    assert lines[-1] == f"mIoU: {want[best]:.2f}% at t={best / 100:.2f}"
    js = json.loads((tmp / "r.json").read_text())
    assert js["thresholds"] == [i / 100 for i in range(60)]
    np.testing.assert_allclose(js["miou"], want, atol=1e-6)
    assert js["best"]["t"] == best / 100 and len(js["per_class"]) == 21
    with Image.open(tmp / "c.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    run_cli(base + ["--t", "0.25", "--logfile", str(tmp / "log.txt"), "--comment", "run B"],
            capsys)
    log = (tmp / "log.txt").read_text()
    assert log.count("=" * 40) == 2 and "run A" in log and "run B" in log
    assert "t=0.59\tmIoU=" in log and f"mIoU: {want[best]:.2f}%" in log


@pytest.mark.parametrize("flag,curve", [(["--curve"], True), (["--curve", "yes"], True),
                                        (["--curve", "1"], True), (["--curve", "False"], False)])
def test_cli_curve_flag_parsing(dataset, capsys, flag, curve):
    base = dataset[0]
    code, lines, err = run_cli(base + flag + ([] if curve else ["--t", "0.2"]), capsys)
    assert code == 0 and len(lines) == (60 if curve else 0) + 1 + 21 + 1  # curve, table, result
    assert re.fullmatch(r"mIoU: \d+\.\d\d% at t=" + (r"0\.\d\d" if curve else "0.20"), lines[-1])


def test_cli_argument_errors(dataset, capsys):
    base = dataset[0]
    code, _, err = run_cli(base + ["--curve", "maybe"], capsys)
    assert code == 2 and "expected a boolean" in err
    code, _, err = run_cli(base + ["--curve", "False"], capsys)
    assert code == 2 and err.strip() == \
        "error: --type npy needs a background threshold: give --t T or --curve"
    code, _, err = run_cli(base + ["--curve", "--t", "0.3"], capsys)
    assert code == 2 and "not both" in err


def test_cli_png_and_t_range(tmp_path, capsys):
    preds, gts = random_case(np.random.default_rng(6), n=3, kind="png")
    names, pdir, gdir = write_case(tmp_path, preds, gts, "png")
    (tmp_path / "l.txt").write_text("\n".join(names))
    base = ["--list", str(tmp_path / "l.txt"), "--predict_dir", str(pdir), "--gt_dir",
            str(gdir), "--num_workers", "0"]
    code, lines, _ = run_cli(base + ["--type", "png"], capsys)
    assert code == 0 and lines[-1] == f"mIoU: {ref_miou(preds, gts, 'png'):.2f}% at t=-"
    code, _, err = run_cli(base + ["--type", "png", "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 2 and "--plot needs a threshold curve" in err


def test_cli_script_error_is_one_line(tmp_path):
    """The real script: a missing prediction is one `error:` line and exit status 2."""
    pdir, gdir = one_image(tmp_path, None)
    (tmp_path / "l.txt").write_text("a\n")
    proc = subprocess.run(
        [sys.executable, "eval_cam.py", "--list", str(tmp_path / "l.txt"), "--predict_dir",
         str(pdir), "--gt_dir", str(gdir), "--t", "0.3", "--num_workers", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: prediction not found: {pdir / 'a.npy'}"
