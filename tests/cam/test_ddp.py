"""torchrun with 2 Gloo processes on the CPU, launched by the tests: DDP training keeps the ranks
identical and equals one process on the same data, a killed DDP run resumes exactly, and
distributed validation and sharded inference equal their single-process results."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cam import ddp_worker
from tests.utils import rows_without_time, tree_bytes
from tool.cam.validate import validate
from tool.common.checkpoint import load_checkpoint
from tool.eval.evaluation import parse_t_range

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run(*cmd: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``cmd`` from the repository root with one thread per process, as torchrun's
    workers have: float results depend on the thread count, not on the process count."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = list(map(str, cmd))
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **popen)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def torchrun(*args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    return run(*TORCHRUN, *args, **popen)


def worker(task: str, cfg: Path, out: Path, *extra: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torchrun("tests/cam/ddp_worker.py", task, cfg, out, *extra)


@pytest.mark.slow
def test_ddp_ranks_keep_identical_parameters(tiny_config, tmp_path):
    """... also with the overlapped step (METHOD.md 5.4.1): the main loss's gradients,
    accumulated under no_sync(), are all-reduced with the mix loss's (each rank has its own
    data here, so a gradient left out of the all-reduce would make the ranks differ)."""
    worker("steps", tiny_config, tmp_path, "--batch_size", "2", "--crf_overlap", "true")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["losses"]) == len(r1["losses"]) == 6  # 2 epochs x 3 iterations per rank
    assert "loss_emd" in r0["losses"][-1] and "loss_mixseg" in r0["losses"][0]
    assert r0["losses"][0]["loss_cls"] != r1["losses"][0]["loss_cls"]  # different data
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name


@pytest.mark.slow
def test_ddp_same_batches_equal_one_process(tiny_config, tmp_path):
    """Averaging two equal gradients is exact, so 2 ranks on the same batches must be one
    process, bit for bit; this also proves DDP leaves the unused ``fc`` of the view step alone
    (a zero gradient would still move it through Adam's moments)."""
    worker("same", tiny_config, tmp_path, "--batch_size", "2")
    ddp = torch.load(tmp_path / "rank0.pt")
    single = ddp_worker.run_steps(ddp_worker.parse(str(tiny_config), ["--batch_size", "2"]),
                                  same=True)
    assert [s.keys() for s in single["losses"]] == [s.keys() for s in ddp["losses"]]
    for name, p in single["params"].items():
        assert torch.equal(p, ddp["params"][name]), name


def _kill_workers(agent: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers (they run in sessions of their own), as a crash would."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    agent.wait(timeout=120)


@pytest.mark.slow
def test_killed_ddp_run_resumes_exactly(tiny_config, tmp_path):
    # batch 2: 3 iterations per rank and epoch, a checkpoint after each; the kill lands in
    # epoch 1 (the view losses' first), wherever the agent's SIGKILL catches the workers
    flags = ["train_mcl.py", "--config", tiny_config, "--max_epoches", "2", "--batch_size", "2",
             "--checkpoint_every", "1"]
    torchrun(*flags, "--session_name", tmp_path / "straight")
    run = tmp_path / "killed"
    agent = torchrun(*flags, "--session_name", run, stderr=subprocess.PIPE)
    for line in agent.stderr:  # the workers share the agent's stderr
        if "(epoch 1, 1 iterations done)" in line:
            _kill_workers(agent)
            break
    assert agent.wait() != 0
    killed = load_checkpoint(run / "last.ckpt")
    assert killed["position"] is not None, "the kill came too late to test anything"
    assert len(killed["position"]["ranks"]) == 2
    r = torchrun(*flags, "--session_name", run, "--resume")
    assert f"at epoch 1, iteration {killed['position']['iteration']}" in r.stderr
    a, b = load_checkpoint(tmp_path / "straight" / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    straight = rows_without_time(tmp_path / "straight" / "metrics.csv")
    assert straight == rows_without_time(run / "metrics.csv")
    log = (tmp_path / "straight" / "train.log").read_text()
    assert log.count("last.ckpt (epoch 0)") == 1  # rank 0 alone logs and saves


@pytest.mark.slow
def test_distributed_validation_equals_single_process(tiny_config, toy_voc, trained,
                                                      tmp_path):
    names = (toy_voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()[:11]
    val_list = tmp_path / "val11.txt"  # 11 images: shards of 6 and 5
    val_list.write_text("\n".join(names) + "\n")
    extra = ["--weights", str(trained), "--val_list", str(val_list)]
    worker("validate", tiny_config, tmp_path / "d", *extra)
    got = np.load(tmp_path / "d" / "val.npz")
    args = ddp_worker.parse(str(tiny_config), extra)
    from tool.cam.build import build_loaders, build_model

    loader = torch.utils.data.DataLoader(build_loaders(args)[1], batch_size=None)
    want = validate(build_model(args, "cpu"), loader, args.gt, parse_t_range(args.val_t_range),
                    torch.device("cpu"), progress=False)
    assert int(got["n_local"]) == 6
    assert np.array_equal(got["confusion"], want.curve.confusion)
    assert np.array_equal(got["miou"], want.curve.miou) and want.best_miou > 0
    assert float(got["cls_map"]) == want.cls_map > 0  # score rows gathered in list order


@pytest.mark.slow
def test_torchrun_sharded_inference_is_byte_identical(tiny_config, trained, tmp_path):
    def cmd(out: Path) -> list:
        return ["infer_cam.py", "--config", tiny_config, "--weights", trained,
                "--out_npy", out / "npy", "--out_png", out / "png", "--crf", "False"]

    run(sys.executable, *cmd(tmp_path / "single"))
    torchrun(*cmd(tmp_path / "sharded"))
    single, sharded = tree_bytes(tmp_path / "single"), tree_bytes(tmp_path / "sharded")
    assert len(single) == 10 and single == sharded  # 4 npy, 4 png, 2 .provenance.json


def test_sync_batchnorm_converts_trainable_bn_only():
    from net.norm import FixedBatchNorm2d, sync_batchnorm

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.BatchNorm2d(3), FixedBatchNorm2d(3),
                            torch.nn.Sequential(torch.nn.BatchNorm2d(5)))
    m[2][0].running_mean.uniform_()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    sync_batchnorm(m)
    assert type(m[0]) is torch.nn.SyncBatchNorm and type(m[2][0]) is torch.nn.SyncBatchNorm
    assert type(m[1]) is FixedBatchNorm2d  # frozen BN keeps using running statistics
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_single_process_helpers_are_identities(monkeypatch):
    from tool.cam.build import ddp_model
    from tool.common.dist import all_reduce_sum, init_distributed, wrap_ddp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(torch.device("cpu")) is False
    net = torch.nn.Linear(2, 2)
    assert wrap_ddp(net) is net
    assert ddp_model(net, torch.device("cpu"), sync_bn=True) is net
    counts = np.arange(6).reshape(2, 3)
    assert all_reduce_sum(counts, torch.device("cpu")) is counts


def test_wrap_ddp_in_a_process_group_and_sync_bn_on_cpu_error():
    import torch.distributed as dist

    from tool.cam.build import ddp_model
    from tool.common.dist import cleanup_distributed
    from tool.common.errors import UserError

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
        assert isinstance(ddp_model(net, torch.device("cpu")),
                          torch.nn.parallel.DistributedDataParallel)
        with pytest.raises(UserError, match="--sync_bn needs CUDA"):
            ddp_model(net, torch.device("cpu"), sync_bn=True)
    finally:
        cleanup_distributed()


def test_batch_size_is_checked_per_process(monkeypatch):
    from argparse import Namespace

    from tool.cam.build import check_batch_size
    from tool.common.errors import UserError

    args = Namespace(batch_size=4, train_list="train_aug.txt")
    check_batch_size(args, 7)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"exceeds the 4 images per process \(2 processes\)"):
        check_batch_size(Namespace(batch_size=5, train_list="train_aug.txt"), 7)
    check_batch_size(args, 7)  # 7 images: shares of 4 (padded) and 4
