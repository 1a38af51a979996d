"""IRN's PolyOptimizer and poly schedule (METHOD.md 13.5.3): the canned learning rates, the
effective momentum of IRN (quirk Q1) and resuming."""
from __future__ import annotations

import pytest
import torch

from tool.irn.optim import PolyOptimizer, poly_lr

CANNED = {0: 0.1, 1: 0.099909086, 330: 0.069425316, 989: 2.0133919e-4}


def irn_groups():
    """IRN's two groups: edge at lr, displacement at 10 lr, both with weight decay."""
    edge, dp = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    return [{"params": [edge], "lr": 0.1, "weight_decay": 1e-4},
            {"params": [dp], "lr": 1.0, "weight_decay": 1e-4}]


@pytest.mark.parametrize("step, lr", CANNED.items())
def test_poly_lr_canned(step, lr):
    assert poly_lr(step, 990, 0.1) == pytest.approx(lr, rel=1e-7)


def test_optimizer_follows_the_canned_schedule():
    opt = PolyOptimizer(irn_groups(), lr=0.1, weight_decay=1e-4, max_step=990)
    seen = []
    for _ in range(995):
        opt.step()  # no gradients: only the schedule moves
        seen.append([g["lr"] for g in opt.param_groups])
    for step, lr in CANNED.items():
        assert seen[step][0] == pytest.approx(lr, rel=1e-7)
        assert seen[step][1] == pytest.approx(10 * lr, rel=1e-7)
    assert seen[990:] == [seen[989]] * 5  # past max_step the last rate stays
    assert poly_lr(1500, 990, 0.1) == seen[989][0]


def test_effective_sgd_settings_reproduce_irn():
    opt = PolyOptimizer(irn_groups(), lr=0.1, weight_decay=1e-4, max_step=990)
    for g in opt.param_groups:
        assert (g["momentum"], g["dampening"], g["nesterov"], g["weight_decay"]) == (
            1e-4, 0, False, 1e-4)
    assert opt.power == 0.9
    assert PolyOptimizer(irn_groups(), 0.1, 1e-4, 990, momentum=0.9).param_groups[0][
        "momentum"] == 0.9


def test_update_by_hand():
    """Two steps, gradient g = 1, theta_0 = 1: coupled decay, then momentum 1e-4 on the
    running buffer b (b_1 = g_1, b_2 = 1e-4 b_1 + g_2)."""
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = PolyOptimizer([p], lr=0.1, weight_decay=1e-4, max_step=10)
    theta, buf = 1.0, 0.0
    for k in range(2):
        p.grad = torch.ones_like(p)
        opt.step()
        g = 1.0 + 1e-4 * theta
        buf = g if k == 0 else 1e-4 * buf + g
        theta -= 0.1 * (1 - k / 10) ** 0.9 * buf
        assert p.item() == pytest.approx(theta, rel=1e-12)


def test_default_weight_decay_and_lr_for_plain_params():
    p = torch.nn.Parameter(torch.ones(1))
    opt = PolyOptimizer([p], lr=0.5, weight_decay=0.01, max_step=4)
    assert opt.param_groups[0]["initial_lr"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0.01


def test_resume_continues_the_schedule():
    opt = PolyOptimizer(irn_groups(), lr=0.1, weight_decay=1e-4, max_step=990)
    for _ in range(330):
        opt.step()
    state = opt.state_dict()
    fresh = PolyOptimizer(irn_groups(), lr=0.1, weight_decay=1e-4, max_step=990)
    fresh.load_state_dict(state)
    assert fresh.global_step == 330
    fresh.step()
    assert fresh.param_groups[0]["lr"] == pytest.approx(CANNED[330], rel=1e-7)


@pytest.mark.parametrize("max_step", [0, -3])
def test_bad_max_step(max_step):
    with pytest.raises(ValueError):
        PolyOptimizer([torch.nn.Parameter(torch.ones(1))], 0.1, 1e-4, max_step)
    with pytest.raises(ValueError):
        poly_lr(0, max_step, 0.1)
