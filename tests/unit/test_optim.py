"""Learning-rate schedules, LARS and parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.train.optim import (
    LARS,
    LrSchedule,
    build_optimizer,
    make_schedule,
    param_groups,
    set_lr,
)


def sched(kind: str, *, epochs: int = 20, spe: int = 10, warmup: float = 2) -> LrSchedule:
    return make_schedule(
        base_lr=0.5, epochs=epochs, steps_per_epoch=spe, warmup_epochs=warmup, schedule=kind
    )


@pytest.mark.parametrize("kind", ["cosine", "linear", "step"])
def test_warmup_rises_linearly_to_the_peak(kind: str) -> None:
    s = sched(kind)
    assert s.warmup_steps == 20
    lrs = [s(i) for i in range(20)]
    assert lrs[0] == pytest.approx(0.5 / 20)
    assert lrs[-1] == pytest.approx(0.5)
    diffs = [b - a for a, b in itertools.pairwise(lrs)]
    assert all(d == pytest.approx(0.5 / 20) for d in diffs)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_runs_from_peak_to_about_zero(kind: str) -> None:
    s = sched(kind)
    after = [s(i) for i in range(20, 200)]
    assert after[0] == pytest.approx(0.5)
    assert all(b < a for a, b in itertools.pairwise(after))
    assert 0 < after[-1] < 0.5 * 0.01
    # Past the end the lr stays at 0 rather than rising again (cosine) or going negative.
    assert s(200) == pytest.approx(0.0, abs=1e-12)
    assert s(500) == pytest.approx(0.0, abs=1e-12)


def test_cosine_midpoint_is_half_the_peak() -> None:
    s = sched("cosine", warmup=0)
    assert s(100) == pytest.approx(0.25)
    assert s(50) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))


def test_step_decays_tenfold_every_30_epochs() -> None:
    s = sched("step", epochs=90, spe=10, warmup=0)
    assert s(0) == s(299) == pytest.approx(0.5)
    assert s(300) == s(599) == pytest.approx(0.05)
    assert s(600) == s(899) == pytest.approx(0.005)


def test_no_warmup_starts_at_the_peak() -> None:
    assert sched("cosine", warmup=0)(0) == pytest.approx(0.5)


def test_fractional_warmup_epochs() -> None:
    assert sched("cosine", warmup=0.5).warmup_steps == 5


def test_unknown_schedule_is_config_error() -> None:
    with pytest.raises(ConfigError, match="--lr-schedule"):
        LrSchedule(0.1, 10, 0, 1, "poly")


def test_lars_trust_ratio_matches_hand_computation() -> None:
    w0 = [3.0, 4.0]  # ||w|| = 5
    g = [0.3, 0.4]
    lr, wd, eta, mom = 1.0, 0.1, 0.001, 0.9
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([p], lr=lr, momentum=mom, weight_decay=wd, eta=eta)

    # Step 1: u = g + wd*w = [0.6, 0.8], ||u|| = 1, trust = 0.001 * 5 / 1 = 0.005.
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([3.0 - 0.003, 4.0 - 0.004], abs=1e-12)

    # Step 2, by hand: the buffer carries step 1's scaled update.
    w1 = [3.0 - 0.003, 4.0 - 0.004]
    u = [g[i] + wd * w1[i] for i in range(2)]
    trust = eta * math.hypot(*w1) / math.hypot(*u)
    buf = [mom * (0.005 * 0.6) + trust * u[0], mom * (0.005 * 0.8) + trust * u[1]]
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([w1[0] - lr * buf[0], w1[1] - lr * buf[1]])


def test_lars_nesterov_and_zero_norm_cases() -> None:
    # A zero weight (fresh bias) gets trust 1, i.e. a plain SGD step.
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.0)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([-0.1] * 3)

    q = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([q], lr=1.0, momentum=0.5, weight_decay=0.0, eta=0.01, nesterov=True)
    q.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opt.step()
    trust = 0.01 * 5 / 1
    # Nesterov on the first step: update = u' + m * buf with buf = u' = trust * g.
    assert q.detach().tolist() == pytest.approx([3.0, 4.0 - (trust + 0.5 * trust)])


def test_lars_skips_adaptation_for_excluded_groups() -> None:
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS(
        [{"params": [p], "weight_decay": 0.0, "lars_adapt": False}],
        lr=0.5,
        momentum=0.0,
        weight_decay=0.1,
    )
    p.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([2.5, 3.5])


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_param_groups_exclude_bn_and_bias() -> None:
    m = _tiny()
    groups = param_groups(m, 4e-5, bn_weight_decay=False)
    assert [len(g["params"]) for g in groups] == [2, 4]  # conv.w, fc.w | conv.b, bn.w, bn.b, fc.b
    assert groups[0]["weight_decay"] == 4e-5 and groups[0]["lars_adapt"]
    assert groups[1]["weight_decay"] == 0.0 and not groups[1]["lars_adapt"]
    both = param_groups(m, 4e-5, bn_weight_decay=True)
    assert len(both) == 1 and len(both[0]["params"]) == 6


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_no_weight_decay_on_bn_and_bias_when_asked(name: str) -> None:
    m = _tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(1.0)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = build_optimizer(
        m,
        name=name,
        lr=0.1,
        momentum=0.9,
        weight_decay=0.5,
        nesterov=False,
        bn_weight_decay=False,
    )
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves anything
    opt.step()
    after = dict(m.named_parameters())
    for k in ("0.weight", "3.weight"):
        assert (after[k] < before[k]).all(), k
    for k in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.equal(after[k], before[k]), k


def test_bn_weight_decay_when_turned_back_on() -> None:
    m = _tiny()
    opt = build_optimizer(
        m, name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5, nesterov=False, bn_weight_decay=True
    )
    bn_w = m[1].weight
    before = bn_w.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(bn_w, before * (1 - 0.1 * 0.5))


def test_set_lr_and_unknown_optimizer() -> None:
    m = _tiny()
    opt = build_optimizer(
        m, name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True, bn_weight_decay=False
    )
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for g in opt.param_groups)
    with pytest.raises(ConfigError, match="--optimizer"):
        build_optimizer(
            m, name="adam", lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False,
            bn_weight_decay=False,
        )  # fmt: skip
