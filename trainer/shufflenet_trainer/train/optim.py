"""Optimizers (SGD, LARS), parameter groups and per-step learning-rate schedules.

The schedule is a pure function of the global step, so a resumed run needs no scheduler
state: the lr at step s is the same whether or not the run was interrupted before s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

# pytorch/examples' step schedule: x0.1 every 30 epochs.
STEP_EPOCHS = 30
STEP_GAMMA = 0.1


def param_groups(
    model: nn.Module, weight_decay: float, *, bn_weight_decay: bool
) -> list[dict[str, Any]]:
    """Split parameters into decayed weights and (optionally) undecayed BN/bias parameters.

    BatchNorm scales/shifts and biases are the 1-D parameters. The recipe leaves them out
    of weight decay (decaying BN scales towards 0 hurts small networks) and, for LARS, out
    of the trust-ratio adaptation too, since their norms say nothing about a useful step.
    `lars_adapt` is a key of our own; torch optimizers keep unknown group keys untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if bn_weight_decay:
        return [{"params": params, "weight_decay": weight_decay, "lars_adapt": True}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False})
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter tensor w with gradient g, in groups with `lars_adapt`:
        u = g + wd * w
        trust = eta * ||w|| / ||u||      (1 when either norm is 0)
        buf = momentum * buf + trust * u
        w -= lr * buf                     (Nesterov: lr * (trust * u + momentum * buf))
    Groups without `lars_adapt` take the plain SGD step.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
    ) -> None:
        if lr <= 0 or eta <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("LARS: lr and eta must be > 0; momentum and weight_decay >= 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "nesterov": nesterov,
            "lars_adapt": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if wd != 0:
                    update = update.add(p, alpha=wd)
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    # Computed on the device without a host sync; a zero norm means no signal.
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0),
                        group["eta"] * w_norm / u_norm.clamp_min(1e-30),
                        torch.ones_like(w_norm),
                    )
                    update = update.mul(trust)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.detach().clone()
                    else:
                        buf.mul_(momentum).add_(update)
                    update = update.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    bn_weight_decay: bool,
    lars_eta: float = 0.001,
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, bn_weight_decay=bn_weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta, nesterov=nesterov)
    raise ConfigError(f"--optimizer {name!r} is unknown: pass sgd or lars")


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate per global step: linear warm-up, then cosine, linear or step decay.

    Warm-up rises linearly to `base_lr`, reaching it at the last warm-up step. Cosine and
    linear decay run from `base_lr` towards 0 over the remaining steps (the last step sits
    one step short of 0, so no update is wasted at lr 0). Step decay multiplies by 0.1 every
    30 epochs counted from the start of training, as pytorch/examples does.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "step"):
            raise ConfigError(
                f"--lr-schedule {self.schedule!r} is unknown: pass cosine, linear or step"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.schedule == "step":
            epoch = step // max(1, self.steps_per_epoch)
            return self.base_lr * STEP_GAMMA ** (epoch // STEP_EPOCHS)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.schedule == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.base_lr * (1.0 - t)


def make_schedule(
    *, base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float, schedule: str
) -> LrSchedule:
    return LrSchedule(
        base_lr=base_lr,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
