"""--amp: the backbone runs under autocast (bf16 on CPU), the CAM head in float32; training
(with loss scaling for fp16) and inference run and stay close to float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import infer_cam
import train_mcl
from net.cam_net import CAMNet
from tests.utils import read_metrics
from tool.cam.train import LOSS_COLUMNS
from tool.common.checkpoint import load_checkpoint
from tool.common.errors import UserError
from tool.common.runtime import amp_dtype


def test_amp_dtype_choice():
    cpu = torch.device("cpu")
    assert amp_dtype(False, "fp16", cpu) is None
    assert amp_dtype(True, "auto", cpu) == torch.bfloat16
    assert amp_dtype(True, "fp16", cpu) == torch.float16
    with pytest.raises(UserError, match="--amp_dtype 'fp8'"):
        amp_dtype(True, "fp8", cpu)


def test_backbone_in_bf16_head_in_float32():
    torch.manual_seed(0)
    net = CAMNet("resnet18", width=0.25, strides=(2, 2, 1)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x, "cam")
        net.amp_dtype = torch.bfloat16
        seen = []
        hook = net.backbone.register_forward_hook(lambda m, i, o: seen.append(o[-1].dtype))
        got = net(x, "cam")
        hook.remove()
    assert seen == [torch.bfloat16]
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        rel = (g - w).abs().max() / w.abs().max()
        assert 0 < rel < 0.05  # bf16 keeps ~3 significant digits


def _train(cfg, out, *extra):
    return train_mcl.main(["--config", str(cfg), "--session_name", str(out), *extra])


@pytest.mark.slow
def test_bf16_training_and_inference_run(tiny_config, tmp_path):
    _train(tiny_config, tmp_path / "r", "--amp")  # 2 epochs: every loss of the schedule
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert all(np.isfinite(float(r[c])) for r in rows for c in LOSS_COLUMNS)
    assert float(rows[1]["loss_pixpro"]) > 0 and float(rows[0]["loss_mixseg"]) > 0
    ckpt = tmp_path / "r" / "last.ckpt"
    assert "scaler" not in load_checkpoint(ckpt)  # bf16 needs no loss scaling
    outs = {}
    for amp in ("False", "True"):
        out = tmp_path / f"npy_{amp}"
        infer_cam.main(["--config", str(tiny_config), "--weights", str(ckpt), "--amp", amp,
                        "--out_npy", str(out), "--crf", "False"])
        outs[amp] = {p.name: np.load(p, allow_pickle=True).item() for p in out.glob("*.npy")}
    assert len(outs["True"]) == 4 and outs["True"].keys() == outs["False"].keys()
    for name, d in outs["True"].items():
        for k, m in d.items():
            assert m.dtype == np.float32
            assert np.abs(m - outs["False"][name][k]).mean() < 0.05, (name, k)


@pytest.mark.slow
def test_fp16_with_loss_scaling_resumes_exactly(tiny_config, tmp_path):
    fp16 = ["--amp", "--amp_dtype", "fp16"]
    _train(tiny_config, tmp_path / "straight", *fp16)
    _train(tiny_config, tmp_path / "resumed", *fp16, "--max_epoches", "1")
    _train(tiny_config, tmp_path / "resumed", *fp16, "--resume")
    a = load_checkpoint(tmp_path / "straight" / "last.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert a["scaler"]["scale"] > 0 and a["scaler"] == b["scaler"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
