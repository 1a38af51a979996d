"""The evaluator with 81 classes (MS COCO 2014) against a per-pixel brute force written here:
confusions, files, the paired comparison and ``eval_cam.py --num_classes 81``; and a VOC count
on COCO data failing in one line."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data.coco import CAT_NAMES as COCO_NAMES
from data.voc import save_label_png
from tests.eval.test_evaluation import run_cli
from tool.common.errors import UserError
from tool.eval import evaluation as ev
from tool.eval import paired

C = 81  # MS COCO 2014 with background
THR = [-0.05, 0.0, 0.15, 0.3, 0.55]  # a negative one: absent classes' zero maps can win
GRID = np.float32([-0.05, 0.0, 0.15, 0.3, 0.55])  # exact ties with the thresholds


# ---------------------------------------------------------------- brute force


def brute_label(pred: dict, y: int, x: int, t: float) -> int:
    """The reference's argmax at one pixel: channel 0 = float32(t), channel k + 1 = map k
    (float32), other channels 0; the first maximum over all C channels."""
    values = [float(np.float32(t))] + [0.0] * (C - 1)
    for k, v in pred.items():
        values[k + 1] = float(np.float32(v[y, x]))
    best = 0
    for c in range(1, C):
        if values[c] > values[best]:
            best = c
    return best


def brute_confusion(pred, gt: np.ndarray, t: float | None) -> np.ndarray:
    """(C, C + 1) [gt, pred] by a loop over pixels; column C = a png value that is no class."""
    conf = np.zeros((C, C + 1), np.int64)
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            g = int(gt[y, x])
            if g == 255:
                continue
            p = brute_label(pred, y, x, t) if t is not None else int(pred[y, x])
            conf[g, p if 0 <= p < C else C] += 1
    return conf


def brute_ious(conf: np.ndarray) -> list[float]:
    """IoU of every class c = 0..C - 1 as the reference: TP / (T + P - TP + 1e-10)."""
    ious = []
    for c in range(C):
        tp, t, p = conf[c, c], conf[c].sum(), conf[:, c].sum()
        ious.append(tp / (t + p - tp + 1e-10))
    return ious


def brute_miou(conf: np.ndarray) -> float:
    return 100 * sum(brute_ious(conf)) / C


# ---------------------------------------------------------------- random COCO data


def coco_case(seed: int, n: int = 5, kind: str = "npy"):
    """Small GT maps with values 0..80 and 255; npy: dicts with keys among 0..79 (the GT's
    classes and others, one empty dict, ties with the thresholds, negative maps); png: label
    maps with values 0..80 and a few 255 / 81 / 200 (no class)."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(3, 8, size=2))
        classes = rng.choice(np.arange(1, C), size=4, replace=False)
        gt = rng.choice(np.concatenate([[0], classes]), size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        gt.flat[0] = 80  # the last class appears in every image
        gts.append(gt)
        if kind == "png":
            pred = rng.choice(np.concatenate([[0, 80], classes]), size=(h, w)).astype(np.uint8)
            pred[rng.random((h, w)) < 0.1] = rng.choice([255, 81, 200])
            preds.append(pred)
            continue
        keys = [] if i == 0 else sorted({*(classes[:3] - 1).tolist(), 79,
                                         *rng.choice(80, size=2).tolist()})
        d = {}
        for k in keys:
            m = rng.normal(0.2, 0.4, size=(h, w))
            on_grid = rng.random((h, w)) < 0.4
            m[on_grid] = rng.choice(GRID, size=int(on_grid.sum()))
            d[int(k)] = m.astype(np.float64 if k % 2 else np.float32)
        if 79 in d:
            d[79].flat[0] = 3.0  # label 80 found where the GT has it
        preds.append(d)
    return preds, gts


def write(root, preds, gts, kind: str):
    names = [f"COCO_val2014_{i:012d}" for i in range(len(gts))]
    for name, pred, gt in zip(names, preds, gts):
        save_label_png(gt, root / "gt" / f"{name}.png")
        path = root / "pred" / f"{name}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "npy":
            np.save(path, pred, allow_pickle=True)  # a plain np.save of the dict
        else:
            save_label_png(pred, path)
    return names, root / "pred", root / "gt"


# ---------------------------------------------------------------- confusions


def test_confusion_npy_81_classes_matches_bruteforce():
    preds, gts = coco_case(0)
    total = np.zeros((len(THR), C, C + 1), np.int64)
    for pred, gt in zip(preds, gts):
        conf = ev.confusion_npy(pred, gt, THR, num_classes=C)
        assert conf.shape == (len(THR), C, C) and conf.dtype == np.int64
        want = np.stack([brute_confusion(pred, gt, t) for t in THR])
        assert not want[:, :, C].any()  # a CAM dict always predicts a class
        np.testing.assert_array_equal(conf, want[:, :, :C])
        total += want
    got = sum(ev.confusion_npy(p, g, THR, num_classes=C) for p, g in zip(preds, gts))
    for j in range(len(THR)):
        assert ev.miou_from_confusion(got[j]) == pytest.approx(brute_miou(total[j]), abs=1e-9)
    np.testing.assert_allclose(ev.miou_curve(got), [brute_miou(c) for c in total], atol=1e-9)


def test_confusion_png_81_classes_matches_bruteforce():
    preds, gts = coco_case(1, kind="png")
    got = sum(ev.confusion_png(p, g, num_classes=C) for p, g in zip(preds, gts))
    want = sum(brute_confusion(p, g, None) for p, g in zip(preds, gts))
    assert got.shape == (1, C, C + 1) and want[:, C].sum() > 0  # some no-class predictions
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_allclose(ev.iou_from_confusion(got[0]), brute_ious(want), atol=1e-12)


@pytest.mark.parametrize("kind,workers", [("npy", 0), ("npy", 2), ("png", 0)])
def test_evaluate_81_classes_from_files(tmp_path, kind, workers):
    preds, gts = coco_case(2, n=6, kind=kind)
    names, pdir, gdir = write(tmp_path, preds, gts, kind)
    thr = THR if kind == "npy" else [None]
    res = ev.evaluate(names, pdir, gdir, kind, THR if kind == "npy" else None, workers,
                      num_classes=C)
    confs = [sum(brute_confusion(p, g, t) for p, g in zip(preds, gts)) for t in thr]
    want = [brute_miou(c) for c in confs]
    np.testing.assert_allclose(res.miou, want, atol=1e-9)
    best = int(np.argmax(want))
    assert res.best_t == thr[best] and res.confusion.shape[1] == C
    assert list(res.per_class) == list(COCO_NAMES) and len(res.per_class) == C
    assert res.per_class == pytest.approx(
        {n: 100 * v for n, v in zip(COCO_NAMES, brute_ious(confs[best]))}, abs=1e-9)
    assert res.per_class["toothbrush"] > 0  # label 80 (key 79) is in every GT (and dict)
    absent = [c for c in range(C) if confs[best][c].sum() == 0 and confs[best][:, c].sum() == 0]
    assert absent and all(res.per_class[COCO_NAMES[c]] == 0.0 for c in absent)


def test_curve_result_names_and_counts_from_the_shape():
    res = ev.CurveResult.from_confusion(np.zeros((2, C, C + 1), np.int64), [0.1, 0.2])
    assert list(res.per_class)[:3] == ["background", "person", "bicycle"]
    assert len(res.to_json()["per_class"]) == C
    assert len(ev.iou_from_confusion(np.ones((3, 21, 22)))[0]) == 21
    with pytest.raises(UserError, match="num_classes 22"):
        ev.CurveResult.from_confusion(np.zeros((1, 22, 22), np.int64), [0.1])
    with pytest.raises(ValueError, match="C, C"):
        ev.iou_from_confusion(np.zeros((21, 23)))
    assert ev.check_num_classes(np.int64(81)) == 81
    for bad in (20, 22, "81", 81.0, True):
        with pytest.raises(UserError, match="num_classes"):
            ev.check_num_classes(bad)


# ---------------------------------------------------------------- the count must match the data


def test_voc_count_on_coco_data_fails_in_one_line(tmp_path):
    gt = np.zeros((4, 5), np.uint8)
    gt[1, 1:3] = 50
    pred = {49: np.ones((4, 5), np.float32)}
    with pytest.raises(UserError) as e:
        ev.confusion_npy(pred, gt, [0.3])  # the VOC default
    assert str(e.value) == ("prediction: ground-truth values outside 0..20 and 255 (max 50: "
                            "MS COCO 2014 masks need num_classes 81)")
    names, pdir, gdir = write(tmp_path, [pred], [gt], "npy")
    for kind_call in (lambda: ev.evaluate(names, pdir, gdir, "npy", [0.3], 0, num_classes=21),
                      lambda: paired.per_image_confusions(names, pdir, gdir, "npy", 0.3, 0)):
        with pytest.raises(UserError, match=re.escape(f"{gdir / names[0]}.png: ground-truth "
                                                      "values outside 0..20 and 255")):
            kind_call()
    # every pixel predicted 50: its IoU is 2 / 20, the 80 others' 0
    res = ev.evaluate(names, pdir, gdir, "npy", [0.3], 0, num_classes=C)
    assert res.best_miou == pytest.approx(100 * (2 / 20) / C, abs=1e-9)
    with pytest.raises(UserError, match=r"dict key 49 is not a class index 0\.\.19"):
        ev.check_cam_dict(pred, (4, 5), "p.npy")
    assert list(ev.check_cam_dict(pred, (4, 5), "p.npy", num_classes=C)) == [49]
    with pytest.raises(UserError, match=r"outside 0\.\.80 and 255$"):  # no larger data set
        ev.confusion_png(gt, np.full((4, 5), 81, np.uint8), num_classes=C)
    with pytest.raises(UserError, match="num_classes 22: expected one of 21"):
        ev.evaluate(names, pdir, gdir, "npy", [0.3], 0, num_classes=22)


def test_one_based_coco_keys_are_refused():
    gt = np.zeros((4, 5), np.uint8)
    gt[1:3, 1:3], gt[3, :] = 1, 80  # person (0-based 0) and toothbrush (0-based 79)
    maps = {1: np.ones((4, 5)), 80: np.ones((4, 5))}  # written by label value
    with pytest.raises(UserError, match=re.escape(
            "dict key 80 is not a class index 0..79; keys look 1-based (1..80): the hand-off "
            "format keys maps by 0-based foreground index 0..79, 0 = person (METHOD.md 6)")):
        ev.confusion_npy(maps, gt, [0.3], num_classes=C)
    gt[3, :] = 50
    with pytest.raises(UserError, match=re.escape(
            "dict keys [1, 50] look 1-based: the ground truth holds classes [0, 49]")):
        ev.confusion_npy({1: maps[1], 50: maps[80]}, gt, [0.3], num_classes=C)
    ok = ev.confusion_npy({0: (gt == 1) * 1.0, 49: (gt == 50) * 1.0}, gt, [0.3], num_classes=C)
    assert ok[0, 0, 0] == 11 and ok[0, 1, 1] == 4 and ok[0, 50, 50] == 5 and ok.sum() == 20


def test_fg_max_argmax_81_classes():
    m, label = ev.fg_max_argmax({79: np.full((2, 2), -0.5), 10: np.full((2, 2), -0.7)}, (2, 2),
                                num_classes=C)
    assert (m == 0).all() and (label == 1).all()  # the absent class 0 (a zero map) wins
    m, label = ev.fg_max_argmax({79: np.full((1, 2), 0.5), 78: np.full((1, 2), 0.5)}, (1, 2),
                                num_classes=C)
    assert (label == 79).all()  # a tie keeps the lower class
    first_20 = {k: np.full((1, 1), -0.5) for k in [*range(20), 79]}
    m, label = ev.fg_max_argmax(first_20, (1, 1), num_classes=C)
    assert m[0, 0] == 0 and label[0, 0] == 21  # VOC's 20 present: COCO's class 20 is absent


# ---------------------------------------------------------------- paired comparison


def test_paired_81_classes(tmp_path):
    preds_a, gts = coco_case(3, n=4, kind="png")
    preds_b = [np.where(g == 255, 0, g).astype(np.uint8) for g in gts]  # B = the GT
    names, dir_a, gdir = write(tmp_path / "a", preds_a, gts, "png")
    _, dir_b, _ = write(tmp_path / "b", preds_b, gts, "png")
    conf = paired.per_image_confusions(names, dir_a, gdir, "png", num_workers=0, num_classes=C)
    assert conf.shape == (4, C, C + 1)
    for c, p, g in zip(conf, preds_a, gts):
        np.testing.assert_array_equal(c, brute_confusion(p, g, None))
    res = paired.compare_folders(names, dir_a, dir_b, gdir, "png", resamples=30,
                                 num_workers=0, num_classes=C)
    want_a = brute_miou(sum(brute_confusion(p, g, None) for p, g in zip(preds_a, gts)))
    assert res.miou_a == pytest.approx(want_a, abs=1e-9) and res.miou_b > res.miou_a
    assert res.ci95[1] < 0 and res.mean_diff < 0


# ---------------------------------------------------------------- eval_cam.py --num_classes 81


@pytest.fixture
def coco_files(tmp_path):
    preds, gts = coco_case(4, n=3)
    names, pdir, gdir = write(tmp_path, preds, gts, "npy")
    (tmp_path / "val_14.txt").write_text("\n".join(names) + "\n")
    base = ["--list", str(tmp_path / "val_14.txt"), "--gt_dir", str(gdir), "--num_workers", "0"]
    return base, preds, gts, pdir, tmp_path


def test_cli_num_classes_81(coco_files, capsys):
    base, preds, gts, pdir, tmp = coco_files
    code, lines, _ = run_cli(base + ["--predict_dir", str(pdir), "--t_range=-0.05:0.6:0.35",
                                     "--num_classes", "81", "--json", str(tmp / "r.json")],
                             capsys)
    want = [brute_miou(sum(brute_confusion(p, g, t) for p, g in zip(preds, gts)))
            for t in (-0.05, 0.3)]
    best = int(np.argmax(want))
    assert code == 0
    assert lines[-1] == f"mIoU: {want[best]:.2f}% at t={(-0.05, 0.3)[best]:.2f}"
    table = lines[2:-1]  # after the two curve lines
    assert len(table) == 1 + C and table[0].split() == ["class", "IoU", "%"]
    assert table[1].startswith("background ") and table[-1].startswith("toothbrush ")
    assert any(line.startswith("baseball glove  ") for line in table)
    assert len({len(line) for line in table}) == 1  # one column width for 81 names
    js = json.loads((tmp / "r.json").read_text())
    assert list(js["per_class"]) == list(COCO_NAMES)
    # the default count (VOC) on these masks: one line naming the file and the fix
    code, _, err = run_cli(base + ["--predict_dir", str(pdir), "--t", "0.3"], capsys)
    assert code == 2 and err.count("\n") == 1 and "need num_classes 81" in err
    code, _, err = run_cli(base + ["--predict_dir", str(pdir), "--t", "0.3", "--num_classes",
                                   "80"], capsys)
    assert code == 2 and "invalid choice: 80 (choose from 21, 81)" in err


def test_cli_compare_num_classes_81(coco_files, capsys):
    base, preds, gts, pdir, tmp = coco_files
    argv = base + ["--compare", str(pdir), str(pdir), "--t", "0.3", "--t_b", "0.15",
                   "--num_classes", "81", "--resamples", "20", "--json", str(tmp / "p.json")]
    code, lines, _ = run_cli(argv, capsys)
    assert code == 0 and lines[-1].endswith("(3 images)")
    js = json.loads((tmp / "p.json").read_text())
    for key, t in (("a", 0.3), ("b", 0.15)):
        conf = sum(brute_confusion(p, g, t) for p, g in zip(preds, gts))
        assert list(js[key]["per_class"]) == list(COCO_NAMES)
        assert js[key]["best"]["miou"] == pytest.approx(brute_miou(conf), abs=1e-9)
