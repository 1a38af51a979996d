"""IRN's optimiser: SGD with a polynomial learning-rate decay (METHOD.md 13.5.3).

IRN's ``PolyOptimizer`` hands its weight decay to SGD positionally, where SGD expects the
momentum, so IRN trains with momentum 1e-4 (practically plain SGD), and the value it calls
"momentum" (0.9) is only the poly power (METHOD.md 13.9 Q1). Here the two are named for what
they do: ``power`` is the decay exponent and ``momentum`` the SGD momentum, which defaults to the
reference's effective 1e-4 (config ``irn.sgd_momentum``; set 0.9 for a conventional SGD).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def poly_lr(step: int, max_step: int, base_lr: float, power: float = 0.9) -> float:
    """Learning rate used by the 0-based step ``step``: base_lr * (1 - step / max_step)^power.

    From ``max_step`` on the rate no longer changes: it stays at the value of the last
    scheduled step, max_step - 1, as ``PolyOptimizer`` does.
    """
    if max_step <= 0:
        raise ValueError(f"max_step must be > 0, got {max_step}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    step = min(step, max_step - 1)
    return base_lr * (1.0 - step / max_step) ** power


class PolyOptimizer(torch.optim.SGD):
    """SGD whose group learning rates follow ``poly_lr`` of their initial values.

    Args:
        param_groups: parameters, or a list of param-group dicts; a group's own ``lr`` and
            ``weight_decay`` override the defaults below (IRN: the edge group at lr, the
            displacement group at 10 lr).
        lr: default initial learning rate.
        weight_decay: default L2 weight decay, added to the gradient (coupled).
        max_step: number of scheduled steps; the rate decays to its step max_step - 1 value
            and stays there.
        power: exponent of the decay (IRN's 0.9).
        momentum: SGD momentum; 1e-4 reproduces IRN (see the module docstring). Dampening 0,
            no Nesterov.

    ``step()`` sets every group's ``lr`` for the current step, then updates, then counts the
    step; ``global_step`` and each group's ``initial_lr`` are saved in ``state_dict()``, so a
    resumed run continues the schedule.
    """

    def __init__(self, param_groups: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                 lr: float, weight_decay: float, max_step: int, power: float = 0.9,
                 momentum: float = 1e-4) -> None:
        if max_step <= 0:
            raise ValueError(f"max_step must be > 0, got {max_step}")
        super().__init__(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.max_step = int(max_step)
        self.power = float(power)
        self.global_step = 0
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def step(self, closure=None):  # torch's signature
        if self.global_step < self.max_step:
            for group in self.param_groups:
                group["lr"] = poly_lr(self.global_step, self.max_step, group["initial_lr"],
                                      self.power)
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "global_step": self.global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.global_step = int(state_dict.pop("global_step", 0))
        super().load_state_dict(state_dict)
