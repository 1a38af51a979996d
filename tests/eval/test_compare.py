"""tool/eval/paired.py and ``eval_cam.py --compare``: per-image scores, paired t-test and bootstrap
CI against brute force and hand-computed values."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

import eval_cam
from tests.eval.test_evaluation import random_case, run_cli, write_case
from tool.common.errors import UserError
from tool.eval import evaluation as ev
from tool.eval import paired

# ---------------------------------------------------------------- brute force


def labels_of(pred, gt: np.ndarray, t: float | None) -> np.ndarray:
    """Prediction label map as do_python_eval builds it (explicit 21-channel tensor)."""
    if t is None:
        return pred
    tensor = np.zeros((21,) + gt.shape, np.float32)
    for k, v in pred.items():
        tensor[k + 1] = v
    tensor[0] = t
    return np.argmax(tensor, axis=0)


def brute_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """t_statistic.py's per-image mIoU (in %) by a loop over classes and pixels."""
    ious = []
    for c in range(21):
        tp = tt = pp = 0
        for g, q in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == 255:
                continue
            tt += g == c
            pp += q == c
            tp += g == c and q == c
        ious.append(tp / (tt + pp - tp + 1e-10))
    return 100 * sum(ious) / 21


def two_folders(root, kind: str, n: int = 6, seed: int = 0):
    """Folders a/ and b/ of different random predictions over one shared GT set."""
    rng = np.random.default_rng(seed)
    preds_a, gts = random_case(rng, n=n, kind=kind)
    preds_b, _ = random_case(rng, n=n, kind=kind)
    if kind == "npy":  # random_case draws the sizes too: fit B's maps to A's GT
        preds_b = [{k: np.resize(v, g.shape) for k, v in p.items()}
                   for p, g in zip(preds_b, gts)]
    else:
        preds_b = [np.resize(p, g.shape) for p, g in zip(preds_b, gts)]
    names, dir_a, gt_dir = write_case(root / "a", preds_a, gts, kind)
    _, dir_b, _ = write_case(root / "b", preds_b, gts, kind)
    return names, dir_a, dir_b, gt_dir, preds_a, preds_b, gts


def noisy_labels(rng: np.random.Generator, gts: list[np.ndarray], flip: float) -> list:
    """GT with a fraction ``flip`` of pixels replaced by random classes."""
    out = []
    for g in gts:
        p = g.copy()
        p[g == 255] = 0
        mask = rng.random(g.shape) < flip
        p[mask] = rng.integers(0, 21, size=int(mask.sum()))
        out.append(p.astype(np.uint8))
    return out


# ---------------------------------------------------------------- per-image scores


@pytest.mark.parametrize("kind,t", [("npy", 0.2), ("png", None)])
def test_per_image_score_matches_bruteforce(tmp_path, kind, t):
    names, dir_a, _, gt_dir, preds, _, gts = two_folders(tmp_path, kind)
    conf = paired.per_image_confusions(names, dir_a, gt_dir, kind, t, num_workers=0)
    assert conf.shape == (len(names), 21, 21 if kind == "npy" else 22)
    assert conf.dtype == np.int64
    want = [brute_score(labels_of(p, g, t), g) for p, g in zip(preds, gts)]
    np.testing.assert_allclose(paired.per_image_miou(conf), want, rtol=0, atol=1e-9)


def test_per_image_confusions_in_order_with_workers(tmp_path):
    names, dir_a, _, gt_dir, *_ = two_folders(tmp_path, "npy", n=7)
    one = paired.per_image_confusions(names, dir_a, gt_dir, "npy", 0.3, num_workers=0)
    two = paired.per_image_confusions(names, dir_a, gt_dir, "npy", 0.3, num_workers=2)
    np.testing.assert_array_equal(one, two)
    # the bounded-memory form compare_folders uses: the same counts, totals and result
    for workers in (0, 2):
        counts, total = paired.per_image_counts(names, dir_a, gt_dir, "npy", 0.3,
                                                num_workers=workers)
        np.testing.assert_array_equal(counts, ev.confusion_counts(one))
        np.testing.assert_array_equal(total, one.sum(axis=0))
    flipped = one[::-1]  # another "method": the same images' confusions in reverse
    a, b = paired.paired_test(one, flipped, resamples=40), paired.paired_test_counts(
        counts, ev.confusion_counts(flipped), total, flipped.sum(axis=0), resamples=40)
    assert a.to_json() == b.to_json()
    np.testing.assert_array_equal(a.scores_b, b.scores_b)


# ---------------------------------------------------------------- t-test


def test_t_statistic_hand_computed():
    # 4 background-only images of 100 pixels: A gets all right, B gets a_i right and calls the
    # rest class 1. Per image IoU_0(A) = 1, IoU_0(B) = a_i / 100, all other IoUs 0, so the score
    # difference is (100 - a_i) / 21 pp = [1, 2, 3, 6] / 21.
    a = [99, 98, 97, 94]
    conf_a = np.zeros((4, 21, 21), np.int64)
    conf_b = np.zeros((4, 21, 21), np.int64)
    conf_a[:, 0, 0] = 100
    conf_b[:, 0, 0] = a
    conf_b[:, 0, 1] = [100 - v for v in a]
    res = paired.paired_test(conf_a, conf_b, resamples=50)
    d = np.array([1, 2, 3, 6]) / 21
    assert res.n == 4 and res.mean_diff == pytest.approx(3 / 21)
    t_formula = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    # mean 3, squared deviations 4 + 1 + 0 + 9 = 14: t = 3 / sqrt(14 / 3 / 4) = 3 sqrt(6 / 7)
    assert res.t == pytest.approx(t_formula) and res.t == pytest.approx(3 * math.sqrt(6 / 7))
    assert res.p_value == pytest.approx(2 * stats.t.sf(3 * math.sqrt(6 / 7), df=3))
    assert res.miou_a == pytest.approx(100 / 21)
    assert res.miou_b == pytest.approx(100 * (388 / 400) / 21)  # class 1: TP 0, so IoU 0
    np.testing.assert_allclose(res.scores_a - res.scores_b, d, atol=1e-12)


# ---------------------------------------------------------------- dataset mIoU


@pytest.mark.parametrize("kind,t_a,t_b,workers", [("npy", 0.2, 0.35, 0), ("png", None, None, 2)])
def test_dataset_miou_equals_evaluate(tmp_path, kind, t_a, t_b, workers):
    names, dir_a, dir_b, gt_dir, *_ = two_folders(tmp_path, kind, seed=1)
    res = paired.compare_folders(names, dir_a, dir_b, gt_dir, kind, t_a, t_b, resamples=20,
                                 num_workers=workers)
    for d, t, miou, conf in ((dir_a, t_a, res.miou_a, res.confusion_a),
                             (dir_b, t_b, res.miou_b, res.confusion_b)):
        want = ev.evaluate(names, d, gt_dir, kind, None if t is None else [t], num_workers=0)
        assert miou == want.best_miou
        np.testing.assert_array_equal(conf, want.confusion[0])
    assert res.t_a == t_a and res.t_b == t_b and res.dir_b == str(dir_b)


# ---------------------------------------------------------------- bootstrap


def brute_bootstrap(conf_a, conf_b, resamples: int, seed: int, chunk: int) -> np.ndarray:
    """One resample at a time: the same draws (one Generator, (chunk, n) integer blocks)."""
    n = len(conf_a)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.integers(0, n, size=(min(chunk, resamples - s), n))
                            for s in range(0, resamples, chunk)])
    diffs = []
    for idx in draws:
        sum_a = sum(conf_a[i] for i in idx)
        sum_b = sum(conf_b[i] for i in idx)
        diffs.append(ev.miou_from_confusion(sum_a) - ev.miou_from_confusion(sum_b))
    return np.array(diffs)


@pytest.fixture
def clear_case(tmp_path):
    """png folders where A (10% noise) clearly beats B (50% noise) on 12 images."""
    rng = np.random.default_rng(7)
    _, gts = random_case(rng, n=12, kind="png")
    names, dir_a, gt_dir = write_case(tmp_path / "a", noisy_labels(rng, gts, 0.1), gts, "png")
    _, dir_b, _ = write_case(tmp_path / "b", noisy_labels(rng, gts, 0.5), gts, "png")
    conf_a = paired.per_image_confusions(names, dir_a, gt_dir, "png", num_workers=0)
    conf_b = paired.per_image_confusions(names, dir_b, gt_dir, "png", num_workers=0)
    return names, dir_a, dir_b, gt_dir, conf_a, conf_b


def test_bootstrap_equals_per_resample_bruteforce(clear_case):
    *_, conf_a, conf_b = clear_case
    fast = paired.bootstrap_miou_diffs(conf_a, conf_b, resamples=23, seed=3, chunk=5)
    np.testing.assert_allclose(fast, brute_bootstrap(conf_a, conf_b, 23, 3, 5), atol=1e-9)
    w = np.concatenate(list(paired.bootstrap_weights(len(conf_a), 23, seed=3, chunk=5)))
    assert w.shape == (23, 12) and (w.sum(axis=1) == 12).all()
    res = paired.paired_test(conf_a, conf_b, resamples=40, seed=5)
    want = np.percentile(brute_bootstrap(conf_a, conf_b, 40, 5, paired.BOOT_CHUNK), [2.5, 97.5])
    np.testing.assert_allclose(res.ci95, want, atol=1e-9)


def test_bootstrap_ci_clear_case_and_deterministic(clear_case):
    *_, conf_a, conf_b = clear_case
    res = paired.paired_test(conf_a, conf_b, resamples=500, seed=0)
    lo, hi = res.ci95
    assert 0 < lo <= res.miou_diff <= hi
    assert res.mean_diff > 0 and res.t > 0 and res.p_value < 1e-3
    again = paired.paired_test(conf_a, conf_b, resamples=500, seed=0)
    assert again.ci95 == res.ci95 and again.to_json() == res.to_json()
    assert paired.paired_test(conf_a, conf_b, resamples=500, seed=1).ci95 != res.ci95
    flipped = paired.paired_test(conf_b, conf_a, resamples=500, seed=0)
    assert flipped.t == pytest.approx(-res.t) and flipped.ci95 == pytest.approx((-hi, -lo))


def test_identical_folders_and_one_image(clear_case):
    names, dir_a, _, gt_dir, conf_a, conf_b = clear_case
    res = paired.compare_folders(names, dir_a, dir_a, gt_dir, "png", resamples=100,
                                 num_workers=0)
    assert res.mean_diff == 0 and res.ci95 == (0.0, 0.0) and res.miou_a == res.miou_b
    assert math.isnan(res.t) and math.isnan(res.p_value)
    js = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert js["t"] is None and js["p_value"] is None and js["ci95"] == [0.0, 0.0]
    assert {"n", "mean_diff", "t", "p_value", "ci95"} <= set(js) and js["n"] == 12
    one = paired.paired_test(conf_a[:1], conf_b[:1], resamples=10)  # n < 2: no t, no crash
    assert one.n == 1 and math.isnan(one.t) and one.ci95[0] == one.ci95[1] == one.miou_diff


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli_case(tmp_path):
    names, dir_a, dir_b, gt_dir, *_ = two_folders(tmp_path, "npy", n=5, seed=2)
    (tmp_path / "l.txt").write_text("\n".join(names) + "\n")
    base = ["--list", str(tmp_path / "l.txt"), "--gt_dir", str(gt_dir), "--num_workers", "0"]
    return base, names, dir_a, dir_b, gt_dir, tmp_path


def test_cli_compare_json_and_t_b(cli_case, capsys):
    base, names, dir_a, dir_b, gt_dir, tmp = cli_case
    argv = base + ["--compare", str(dir_a), str(dir_b), "--t", "0.2", "--resamples", "200"]
    code, lines, _ = run_cli(argv + ["--json", str(tmp / "p.json")], capsys)
    assert code == 0
    assert re.fullmatch(r"paired: A-B mIoU diff [+-]\d+\.\d\d pp, 95% CI \[[+-]\d+\.\d\d, "
                        r"[+-]\d+\.\d\d\], p=\S+ \(5 images\)", lines[-1])
    js = json.loads((tmp / "p.json").read_text())
    assert {"n", "mean_diff", "t", "p_value", "ci95"} <= set(js["paired"])
    assert js["paired"]["n"] == 5 and js["paired"]["t_b"] == 0.2 and len(js["paired"]["ci95"]) == 2
    want_a = ev.evaluate(names, dir_a, gt_dir, "npy", [0.2], num_workers=0)
    assert js["a"] == want_a.to_json() and js["paired"]["miou_a"] == want_a.best_miou
    code, lines, _ = run_cli(argv + ["--t_b", "0.45", "--json", str(tmp / "q.json")], capsys)
    js2 = json.loads((tmp / "q.json").read_text())["paired"]
    want_b = ev.evaluate(names, dir_b, gt_dir, "npy", [0.45], num_workers=0).best_miou
    assert code == 0 and js2["t_b"] == 0.45 and js2["miou_b"] == want_b
    assert js2["miou_b"] != js["paired"]["miou_b"] and js2["miou_a"] == js["paired"]["miou_a"]
    res = eval_cam.main(argv + ["--seed", "4"])
    assert isinstance(res, paired.PairedResult) and res.seed == 4 and res.resamples == 200


def test_cli_compare_errors(cli_case, capsys):
    base, names, dir_a, dir_b, *_ = cli_case
    cmp = ["--compare", str(dir_a), str(dir_b)]
    with pytest.raises(UserError, match="--curve/--t_range do not apply to --compare"):
        eval_cam.main(base + cmp + ["--curve"])
    cases = [
        (base + ["--t", "0.2"], "give either --predict_dir DIR or --compare"),
        (base + cmp + ["--predict_dir", str(dir_a), "--t", "0.2"], "exactly one"),
        (base + cmp, "--compare with --type npy needs --t T"),
        (base + ["--compare", str(dir_a), str(dir_b / "nope"), "--t", "0.2"],
         f"prediction folder not found: {dir_b / 'nope'}"),
        (base + ["--predict_dir", str(dir_a), "--t", "0.2", "--t_b", "0.3"], "only with"),
        (base + cmp + ["--t", "0.2", "--resamples", "0"], "--resamples must be >= 1"),
    ]
    for argv, msg in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, (argv, err)
    (dir_b / f"{names[3]}.npy").unlink()
    code, _, err = run_cli(base + cmp + ["--t", "0.2"], capsys)
    assert code == 2 and err.strip() == f"error: prediction not found: {dir_b / names[3]}.npy"
