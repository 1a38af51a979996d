"""The developer tools (tool/dev/): each benchmark section and the memory estimate as smoke
tests that also check what they compare against."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.voc import load_mask
from tool.common.errors import UserError
from tool.dev import bench, bench_eval, bench_refine, model_memory
from tool.dev.bench_crf import CLASS_COUNT_P, bench_crf, make_batch
from tool.eval import evaluation as ev


def test_bench_eval_section_runs_and_curves_agree(tmp_path, capsys):
    gt_dir = tmp_path / "voc" / "SegmentationClass"
    names = bench_eval.synthetic_gt(gt_dir, n=3)
    lst = tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text("\n".join(names) + "\n")
    res = bench.main(["--only", "eval", "--voc12_root", str(tmp_path / "voc"),
                      "--eval_t_range", "0.1:0.5:0.1", "--eval_workers", "2",
                      "--eval_repeats", "1", "--eval_coco_images", "4",
                      "--eval_coco_size", "24,32", "--json", str(tmp_path / "b.json")])
    r = res["eval"]
    assert r["identical"] and r["images"] == 3 and r["thresholds"] == 4
    assert json.loads((tmp_path / "b.json").read_text())["eval"]["speedup"] == r["speedup"]
    out = capsys.readouterr().out
    assert "curves identical: True" in out
    # the 81-class run: N/4, N/2, N images, each in its own process, 2 workers from 2 images
    coco = r["coco"]
    assert [run["images"] for run in coco["runs"]] == [1, 2, 4] and coco["workers"] == 2
    assert [run["workers"] for run in coco["runs"]] == [1, 2, 2]
    for run in coco["runs"]:
        assert run["thresholds"] == 4 and run["images_per_s"] > 0
        assert run["peak_rss_growth_mb"] >= 0 and 0 < run["classes_in_gt"] <= 81
        assert (run["worker_peak_rss_growth_mb"] is None) == (run["workers"] == 1)
    assert coco["projected_coco_val_s"] == pytest.approx(40137 / coco["runs"][-1]["images_per_s"])
    assert "eval, 81 classes: 24x32 images x 4 thresholds in one pass, 2 worker processes" in out
    assert "projected for COCO val (40,137 images)" in out
    with pytest.raises(UserError, match="unknown section"):
        bench.main(["--only", "eval,nope"])


def test_bench_eval_coco_images_are_coco_like(tmp_path):
    """The generated 81-class case: masks with labels up to 80 and 255 borders, dicts keyed
    0-based by the masks' classes; the evaluator agrees with the reference way on it."""
    assert bench_eval.write_coco_case(tmp_path, 6, (24, 32), workers=2) > 0
    names = [bench_eval.coco_name(i) for i in range(6)]
    gts = [load_mask(tmp_path / "gt" / f"{n}.png") for n in names]
    dicts = [np.load(tmp_path / "cams" / f"{n}.npy", allow_pickle=True).item() for n in names]
    assert max(int(g[g != 255].max()) for g in gts) > 20 and all((g == 255).any() for g in gts)
    for g, d in zip(gts, dicts):
        assert sorted(k + 1 for k in d) == sorted(set(np.unique(g).tolist()) - {0, 255})
        assert all(v.dtype == np.float32 and v.shape == (24, 32) for v in d.values())
    res = ev.evaluate(names, tmp_path / "cams", tmp_path / "gt", "npy", [0.2, 0.4], 0,
                      num_classes=81)
    for t, miou in zip([0.2, 0.4], res.miou):
        counts = bench_eval.reference_counts(zip(dicts, gts), t, num_classes=81)
        assert miou == pytest.approx(bench_eval.reference_miou(*counts), abs=1e-9)
    assert bench_eval.coco_counts(2000) == [500, 1000, 2000] and bench_eval.coco_counts(1) == [1]


@pytest.mark.parametrize("source", ["toy", "photo", "smooth"])
def test_bench_crf_smoke(source, toy_voc):
    """Every image source at 48 px; the pool's labels are checked against in-process inside."""
    res = bench_crf(batch=2, size=48, workers=(2,), repeats=1, layout="train", source=source,
                    voc12_root=toy_voc)
    assert res["maps"] == 4 and res["merge"]["agreement"] == 1.0
    assert res["drop"]["agreement"] >= 0.95 and res["merge"]["pool"][2]["speedup"] > 0
    assert res["merge"]["pool"][2]["machine_ceiling"] > 0
    assert all(2 <= n <= 1 + len(CLASS_COUNT_P) for n in res["labels_per_map"])


def test_bench_crf_batches_are_realistic(toy_voc):
    """Toy images keep classes their masks have; partners repeat the own images."""
    images, maps, presents = make_batch("toy", 3, 40, seed=1, layout="train", voc12_root=toy_voc)
    assert images.shape == (6, 40, 40, 3) and maps.shape == (6, 21, 40, 40)
    assert maps.dtype == np.float16 and {im.tobytes() for im in images[3:]} <= {
        im.tobytes() for im in images[:3]}
    for m, p in zip(maps, presents):
        absent = np.setdiff1d(np.arange(1, 21), p)
        assert len(p) >= 1 and not m[absent].any() and m[p].any()  # only present classes
    with pytest.raises(ValueError, match="unknown image source"):
        make_batch("nope", 1, 8)


@pytest.mark.slow
def test_bench_refine_smoke(tmp_path, capsys):
    """Both engines, each in its own process, on a 40 x 50 image (10 x 13 grid)."""
    res = bench.main(["--only", "refine", "--refine_size", "40,50",
                      "--json", str(tmp_path / "r.json")])
    r = res["refine"]
    assert r["identical"] and r["dense"]["speedup"] == 1.0 and r["sparse"]["speedup"] > 0
    assert r["dense"]["channels"] == 20 and r["dense"]["seconds"] > 0
    # dense: two (hw)^2 float32 matrices (and the path index both engines hold)
    assert r["dense"]["analytic_mb"] > 2 * 130 ** 2 * 4 / 2 ** 20 > r["sparse"]["analytic_mb"] / 4
    assert bench_refine.analytic_mb((375, 500), 20, "dense") > 1000 > 25 * bench_refine.analytic_mb(
        (375, 500), 20, "sparse")
    assert json.loads((tmp_path / "r.json").read_text())["refine"]["identical"]
    assert "labels identical: True" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_reports_one_and_two_processes(tiny_config, toy_voc, capsys):
    res = bench.main(["--only", "train,infer", "--voc12_root", str(toy_voc),
                      "--train_config", str(tiny_config), "--train_iters", "1",
                      "--infer_config", str(tiny_config), "--infer_procs", "1"])
    for phase in ("main pass (MCL)", "+ EMD (full step)"):
        for col in ("1 process", "1 process, 1/N cores", "2 processes"):
            assert res["train"][phase][f"images_per_s ({col})"] > 0
    # inference's torchrun columns run the same launcher as training's (test time: 1 here)
    assert res["infer"]["images_per_s (1 process)"] > 0
    assert "DDP efficiency" in capsys.readouterr().out


def test_model_memory_smoke(capsys):
    rows = model_memory.main(["--size", "32", "--crop", "64", "--backbones", "resnet18-w0.5"])
    (r,) = rows
    assert r["cam"] == (4, 4) and r["act_mb"] > r["affinity_mb"] > 0
    # The affinity term is whole (N, hw, hw) float32 matrices at the crop's CAM size.
    n_matrices = r["affinity_mb"] * model_memory.MB / (4 * 16 ** 2)
    assert n_matrices >= 1 and n_matrices == pytest.approx(round(n_matrices))
    assert r["train_state_mb"] == pytest.approx(16 * r["params_m"] * 1e6 / model_memory.MB)
    assert "| resnet18-w0.5 | " in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown"):
        model_memory.main(["--backbones", "vgg"])


def test_bench_seg_smoke(tiny_config, toy_voc, tmp_path, capsys):
    """Stage 3: training steps on the GT masks as PNG pseudo labels; the released inference
    (6 scales x flip) with and without the CRF."""
    res = bench.main(["--only", "seg", "--voc12_root", str(toy_voc), "--seg_config",
                      str(tiny_config), "--seg_iters", "1", "--seg_images", "2",
                      "--json", str(tmp_path / "s.json")])
    r = res["seg"]
    assert r["train"]["arch"] == "toy" and r["train"]["images"] == 4  # 1 batch of the tiny 4
    assert r["train_images_per_s"] > 0
    assert r["infer"]["images"] == 2 and r["infer"]["passes"] == 12  # the released scales
    assert r["infer_images_per_s (no crf)"] > r["infer_images_per_s (crf)"] > 0
    assert 0 < r["crf_share"] < 1
    assert json.loads((tmp_path / "s.json").read_text())["seg"]["crf_share"] == r["crf_share"]
    assert "pseudo labels = the GT masks" in capsys.readouterr().out
    with pytest.raises(UserError, match="seg_iters"):
        bench.main(["--only", "seg", "--seg_iters", "0"])


def test_model_memory_seg_rows(capsys):
    """Stage-3 rows: the toy SegNet (batch 1, Adam) and DeepLab (batch 2 per image, SGD)."""
    toy, deeplab = model_memory.main(["--size", "64", "--crop", "128", "--backbones", "",
                                      "--seg", "toy,deeplabv3_resnet101"])
    mb_per_param = 1e6 / model_memory.MB  # x bytes per parameter = x * params_m * this MB
    assert toy["cam"] is None and toy["affinity_mb"] == 0
    # held at full resolution: dense_ft (32 channels), the logits and CE's log-softmax (21 each)
    assert toy["act_mb"] * model_memory.MB >= (32 + 2 * 21) * 128 ** 2 * 4
    # toy builds BiFPN modules it never runs: no gradient or Adam state for them
    assert 4 < toy["train_state_mb"] / (toy["params_m"] * mb_per_param) < 16
    assert deeplab["train_state_mb"] == pytest.approx(12 * deeplab["params_m"] * mb_per_param)
    assert deeplab["act_mb"] > 10 * toy["act_mb"]
    assert "| toy (seg) | " in capsys.readouterr().out
    with pytest.raises(UserError, match="nothing to estimate"):
        model_memory.main(["--backbones", ""])
    with pytest.raises(UserError, match="--seg: unknown"):
        model_memory.main(["--seg", "unet"])
    with pytest.raises(UserError, match="--size >= 64"):
        model_memory.main(["--size", "32", "--seg", "toy"])
