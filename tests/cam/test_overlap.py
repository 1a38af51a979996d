"""The overlapped training step (``crf_overlap``, METHOD.md 5.4.1): the main loss's backward
runs while the CRF computes the pseudo labels, and the step equals the plain one (the same
gradients up to float rounding, the same losses, one all-reduce under DDP). A short training
run with it: tests/cam/test_train.py; under torchrun: tests/cam/test_ddp.py."""
from __future__ import annotations

import contextlib

import pytest
import torch

import train_mcl
from tool.cam.build import build_loaders, build_model, epoch_loader
from tool.cam.step import StepContext, TrainLosses, crf_overlap_on, overlaps, train_step
from tool.common.config import parse_config_args
from tool.common.runtime import epoch_generators
from tool.crf import CRFPool

EPOCH = 1  # tiny config: mix branch on since epoch 0, augmentation from epoch 1


def _args(tiny_config, overlap: bool, *extra: str):
    # views from epoch 5 (never here): the iteration is optimizer step 1 alone
    return parse_config_args(
        ["--config", str(tiny_config), "--crf_overlap", str(overlap).lower(),
         "--pixpro_start", "5", "--emd_start", "5", "--zero_grad_released", "False", *extra],
        train_mcl.SECTIONS, "", tiny_config)


def _step(args, pool: CRFPool | None, wrap=lambda m: m) -> tuple[dict, dict, dict]:
    """One train_step at EPOCH on the first tiny batch, from fixed weights and seeds.

    Returns (gradient of each parameter at the optimizer step, or None; the losses; the
    parameters' names in the order DDP-like wrappers see them)."""
    torch.manual_seed(0)
    net = build_model(args, torch.device("cpu"))
    batch = next(iter(epoch_loader(build_loaders(args)[0], args, EPOCH)))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.wt_dec)
    grads: dict[str, torch.Tensor | None] = {}
    names = {p: n for n, p in net.named_parameters()}

    def capture(o, *_):
        for p in o.param_groups[0]["params"]:
            grads[names[p]] = None if p.grad is None else p.grad.detach().clone()

    opt.register_step_pre_hook(capture)
    torch.manual_seed(1)  # drop-connect draws of the main pass
    ctx = StepContext(args, EPOCH, args.camT, *epoch_generators(0, EPOCH), pool)
    losses = train_step(wrap(TrainLosses(net)), opt, batch, ctx, torch.device("cpu"))
    return grads, losses, ctx


def _assert_same_step(a: tuple, b: tuple) -> None:
    (ga, la, _), (gb, lb, _) = a, b
    assert la == lb  # the same forwards, so the same loss values, bit for bit
    assert {"loss_cls", "loss_er", "loss_mixseg", "loss_dice", "loss_sc"} <= set(la)
    assert [n for n, g in ga.items() if g is None] == [n for n, g in gb.items() if g is None]
    assert any(g is not None for g in ga.values())
    for name, g in ga.items():
        if g is not None:
            torch.testing.assert_close(gb[name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def pool2():
    with CRFPool(2) as pool:
        pool.warmup()
        yield pool


def test_overlapped_step_gradients_equal_the_plain_step(tiny_config, pool2):
    """CRF on, a real pool of 2 workers, augmentation on: the random draws (partner, angles,
    scale-and-place) come in the same order, and the two backwards add up to the one."""
    plain = _step(_args(tiny_config, False), pool2)
    overlapped = _step(_args(tiny_config, True), pool2)
    assert not overlaps(plain[2], "cpu") and overlaps(overlapped[2], "cpu")
    _assert_same_step(plain, overlapped)
    # the same draws were consumed: both generators are at the same state afterwards
    assert plain[2].rng.random() == overlapped[2].rng.random()
    assert torch.equal(plain[2].gen.get_state(), overlapped[2].gen.get_state())


class _FakeDDP(torch.nn.Module):
    """DistributedDataParallel's interface as the step uses it: forward and ``no_sync``;
    records in which of them each forward and each gradient computation ran."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.in_no_sync, self.events = module, False, []
        for p in module.parameters():
            p.register_hook(self._grad_hook)

    def _grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        self.events.append(("grad", self.in_no_sync))
        return grad

    @contextlib.contextmanager
    def no_sync(self):
        self.events.append(("no_sync", None))
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, step, *args, **kwargs):
        self.events.append((step, self.in_no_sync))
        return self.module(step, *args, **kwargs)


def test_first_backward_runs_under_no_sync(tiny_config):
    """One all-reduce per optimizer step: the main loss's backward accumulates locally
    (no_sync), the mix backward is the synchronised one; the plain step never enters no_sync."""
    wrappers = []

    def wrap(m):
        wrappers.append(_FakeDDP(m))
        return wrappers[-1]

    plain = _step(_args(tiny_config, False), None, wrap)
    overlapped = _step(_args(tiny_config, True), None, wrap)
    _assert_same_step(plain, overlapped)
    ev_plain, ev = wrappers[0].events, wrappers[1].events
    assert ev_plain[0] == ("main", False) and ("no_sync", None) not in ev_plain
    assert all(e == ("grad", False) for e in ev_plain[1:])
    assert [e for e in ev if e[0] != "grad"] == [("no_sync", None), ("first", True),
                                                ("mix", False)]
    first = ev.index(("first", True))
    mix = ev.index(("mix", False))
    assert ev[first + 1:mix] and all(e == ("grad", True) for e in ev[first + 1:mix])
    assert ev[mix + 1:] and all(e == ("grad", False) for e in ev[mix + 1:])


def test_fp16_loss_scaling_scales_both_backwards(tiny_config):
    """GradScaler: both backwards scaled by the same factor, one (unscaling) optimizer step."""
    args = _args(tiny_config, True)
    torch.manual_seed(0)
    net = build_model(args, torch.device("cpu"))
    batch = next(iter(epoch_loader(build_loaders(args)[0], args, EPOCH)))
    results = []
    for overlap in ("false", "true"):
        args.crf_overlap = overlap
        model = build_model(args, torch.device("cpu"))
        model.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        steps = []
        opt.register_step_post_hook(lambda o, *_, s=steps: s.append(1))
        torch.manual_seed(1)
        ctx = StepContext(args, EPOCH, args.camT, *epoch_generators(0, EPOCH), scaler=scaler)
        train_step(TrainLosses(model), opt, batch, ctx, torch.device("cpu"))
        assert steps == [1] and scaler.get_scale() == 1024.0  # no inf: stepped, not backed off
        results.append(dict(model.named_parameters()))
    for name, p in results[0].items():  # SGD, lr 1: parameter change = unscaled gradient
        torch.testing.assert_close(results[1][name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_crf_overlap_modes():
    assert crf_overlap_on("auto", "cuda") and not crf_overlap_on("auto", "cpu")
    assert crf_overlap_on("true", "cpu") and not crf_overlap_on("false", "cuda:0")
    with pytest.raises(ValueError, match="crf_overlap 'yes'"):
        crf_overlap_on("yes", "cpu")
