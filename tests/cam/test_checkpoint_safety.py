"""Stage 1's checkpoints under the safe loader (tool/common/checkpoint.py): they load without
unpickling anything, mid-epoch random states included, and ``--resume`` / ``--weights`` with a
file that is no checkpoint of this network are one-line errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_mcl
from tool.common import checkpoint
from tool.common.checkpoint import UNSAFE_PICKLE_ENV
from tool.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
EFFLITE0 = ("--backbone", "efflite0", "--backbone_strides", "[]", "--backbone_width", "1.0")


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(UNSAFE_PICKLE_ENV, raising=False)


def _train(cfg, *extra):
    return train_mcl.main(["--config", str(cfg), *extra])


def test_stage1_checkpoints_load_and_resume_without_unpickling(tiny_config, tmp_path,
                                                               monkeypatch):
    """One tiny epoch with a checkpoint every iteration; the first mid-epoch last.ckpt is kept:
    it holds the epoch's numpy Generator (PCG64, Python ints) and torch.Generator states."""
    import tool.common.engine as E

    real_save = E.save_checkpoint

    def save(path, ckpt):
        real_save(path, ckpt)
        if ckpt["position"] is not None and not (tmp_path / "mid" / "last.ckpt").exists():
            (tmp_path / "mid").mkdir()
            shutil.copyfile(path, tmp_path / "mid" / "last.ckpt")

    monkeypatch.setattr(E, "save_checkpoint", save)
    run = tmp_path / "run"
    _train(tiny_config, "--session_name", str(run), "--max_epoches", "1", "--plmix", "False",
           "--checkpoint_every", "1")
    monkeypatch.setattr(E, "save_checkpoint", real_save)
    monkeypatch.setattr(checkpoint, "_torch_load_unsafe", None)  # fails if ever reached
    for path in (run / "last.ckpt", run / "best.ckpt", tmp_path / "mid" / "last.ckpt"):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        assert {"model", "optimizer", "scheduler", "history", "config"} <= set(ck), path
    mid = torch.load(tmp_path / "mid" / "last.ckpt", weights_only=True)["position"]
    state = mid["ranks"][0]["epoch_state"]
    assert state["rng"]["bit_generator"] == "PCG64" and torch.is_tensor(state["gen"])
    _train(tiny_config, "--session_name", str(tmp_path / "mid"), "--max_epoches", "1",
           "--plmix", "False", "--checkpoint_every", "1", "--resume")
    a = torch.load(run / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "mid" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())  # the resume is still exact


def test_resume_of_a_checkpoint_without_model_is_one_line(tiny_config, trained):
    ck = torch.load(trained, weights_only=True)
    torch.save({k: v for k, v in ck.items() if k != "model"}, trained)
    with pytest.raises(UserError) as e:
        _train(tiny_config, "--session_name", str(trained.parent), "--max_epoches", "2",
               "--resume")
    assert str(e.value).startswith(f"{trained} is not a training checkpoint of this trainer: "
                                   "it lacks model (its keys: ")
    assert "use --weights instead of --resume" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_another_networks_checkpoint_is_one_line(tiny_config, trained, tmp_path):
    run = str(trained.parent)
    with pytest.raises(UserError) as e:  # the same backbone, twice as wide
        _train(tiny_config, "--session_name", run, "--max_epoches", "2", "--resume",
               "--backbone_width", "0.5")
    msg = str(e.value)
    assert msg.startswith(f"{trained} holds a resnet18 (backbone_width 0.25) checkpoint, not "
                          "this config's network (") and "\n" not in msg
    assert "shape mismatches: backbone.conv1.weight [16, 3, 7, 7] vs [32, 3, 7, 7]" in msg
    with pytest.raises(UserError, match=r"last\.ckpt does not fit the model: .*missing keys"):
        _train(tiny_config, "--session_name", str(tmp_path / "w"), "--max_epoches", "1",
               *EFFLITE0, "--weights", str(trained))
    # the shell's view of another backbone: status 2 and one error line
    r = subprocess.run([sys.executable, "train_mcl.py", "--config", str(tiny_config),
                        "--session_name", run, "--max_epoches", "2", "--resume", *EFFLITE0],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].startswith(f"error: {trained} holds a resnet18 (backbone_strides [2, 2, 1], "
                                "backbone_width 0.25) checkpoint, not this config's network (")
