"""Benchmark section ``infer``: images/s of multi-scale + flip inference on the toy config."""
from tool.bench_train import add_infer_args as add_args
from tool.bench_train import run_infer as run

__all__ = ["add_args", "run"]
