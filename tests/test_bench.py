"""The benchmark sections (tool/dev/bench*.py) as smoke tests: they run and agree with what
they measure against."""
from __future__ import annotations


def test_bench_crf_smoke():
    from tool.dev.bench_crf import bench_crf

    res = bench_crf(batch=2, size=48, workers=0, repeats=1, layout="train")
    assert res["maps"] == 4 and res["merge"]["agreement"] == 1.0
    assert res["drop"]["agreement"] >= 0.95 and res["merge"]["speedup"] > 0  # 48-px smoke test
