"""Kernel choice by measurement for the channel-shuffle ops (model/kernel_choice.py)."""

import logging

import pytest
import torch

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.model import kernel_choice, ops, shufflenetv2

FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    kernel_choice.reset()
    yield
    kernel_choice.reset()


def pair(shape=(2, 6, 3, 5), dtype=torch.float32, memory_format=torch.contiguous_format):
    return tuple(
        torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format) for _ in range(2)
    )


def test_pick_fastest_keeps_the_default_unless_clearly_faster() -> None:
    assert kernel_choice.pick_fastest({"copy": 1.0, "gather": 0.97}) == "copy"
    assert kernel_choice.pick_fastest({"copy": 1.0, "gather": 0.90}) == "gather"
    assert kernel_choice.pick_fastest({"copy": 1.0, "gather": 1.5}) == "copy"
    # Equal times: the earlier entry, whatever the dict's contents otherwise.
    assert kernel_choice.pick_fastest({"gather": 0.5, "triton": 0.5}, default="copy") == "gather"
    assert kernel_choice.pick_fastest({"triton": 0.5, "gather": 0.5}, default="copy") == "triton"


def _reference(x):
    return x * 2


def test_a_wrong_or_failing_candidate_is_dropped_and_logged_once(caplog) -> None:
    calls = {"wrong": 0}

    def wrong(x):  # the fastest, and wrong
        calls["wrong"] += 1
        return x

    def boom(x):
        raise RuntimeError("no kernel for this shape")

    candidates = {"copy": lambda x: x + x, "wrong": wrong, "boom": boom}
    with caplog.at_level(logging.WARNING, logger=kernel_choice.__name__):
        for shape in ((2, 3), (4, 5)):
            chosen = kernel_choice.choose("toy", candidates, _reference, (torch.ones(shape),))
            assert chosen is candidates["copy"]
    dropped = [r.getMessage() for r in caplog.records]
    assert len([m for m in dropped if "'wrong'" in m and "differs" in m]) == 1
    assert len([m for m in dropped if "'boom'" in m and "RuntimeError" in m]) == 1
    # Checked once per key, never timed.
    assert calls["wrong"] == 2


def test_the_choice_is_made_once_per_key() -> None:
    calls = {"copy": 0}

    def copy(x):
        calls["copy"] += 1
        return x * 2

    candidates = {"copy": copy}
    x = torch.ones(3, 4)
    kernel_choice.choose("toy", candidates, _reference, (x,))
    first = calls["copy"]
    assert first >= 1 + kernel_choice.REPEATS  # the check, then the timed repeats
    kernel_choice.choose("toy", candidates, _reference, (x,))
    assert calls["copy"] == first
    kernel_choice.choose("toy", candidates, _reference, (x.double(),))  # a new key: dtype
    assert calls["copy"] > first
    lines = kernel_choice.report()
    assert len(lines) == 2 and all(": copy (copy " in line for line in lines)


def test_auto_measures_only_where_allowed() -> None:
    runs = {"gather": 0}

    def gather(x):
        runs["gather"] += 1
        return x * 2

    candidates = {"copy": lambda x: x * 2, "gather": gather}
    chosen = kernel_choice.choose("toy", candidates, _reference, (torch.ones(2),), measurable=())
    assert chosen is candidates["copy"] and runs["gather"] == 0
    kernel_choice.set_policy("measure")  # opt-in: measured on any device
    kernel_choice.choose("toy", candidates, _reference, (torch.ones(2),), measurable=())
    assert runs["gather"] == 1 + kernel_choice.REPEATS


def test_a_forced_kernel_is_checked_and_must_be_correct() -> None:
    kernel_choice.set_policy("gather")
    with pytest.raises(RuntimeError, match="'gather' differs from the reference"):
        kernel_choice.choose(
            "toy", {"copy": _reference, "gather": lambda x: x}, _reference, (torch.ones(2),)
        )
    kernel_choice.set_policy("triton")
    with pytest.raises(ConfigError, match="--shuffle-kernel triton: not available on cpu"):
        kernel_choice.choose("toy", {"copy": _reference}, _reference, (torch.ones(2),))


def test_bad_policies_name_the_flag_and_the_choices(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--shuffle-kernel: unknown kernel policy 'fast'"):
        kernel_choice.set_policy("fast")
    monkeypatch.setenv(kernel_choice.ENV, "fast")
    with pytest.raises(ConfigError, match="SHUFFLENET_SHUFFLE_KERNEL='fast'"):
        kernel_choice.policy()


@pytest.mark.parametrize("policy", ["copy", "stack", "gather", "auto"])
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_computes_the_ops(policy, memory_format, dtype) -> None:
    kernel_choice.set_policy(policy)
    x1, x2 = pair((3, 10, 3, 5), dtype, memory_format)
    a, b = ops.channel_shuffle_split(x1, x2)
    ref_a, ref_b = ops.reference_channel_shuffle_split(x1, x2)
    assert torch.equal(a, ref_a) and torch.equal(b, ref_b)
    assert a.is_contiguous(memory_format=memory_format)
    cat = ops.channel_shuffle_cat(x1, x2)
    assert torch.equal(cat, ops.reference_channel_shuffle_cat(x1, x2))
    assert cat.is_contiguous(memory_format=memory_format)
    # The inverses (the backward kernels) undo them.
    u1, u2 = ops.channel_unshuffle_split_op(a, b)
    assert torch.equal(u1, x1) and torch.equal(u2, x2)
    f1, f2 = ops.channel_unshuffle_cat_op(cat)
    assert torch.equal(f1, x1) and torch.equal(f2, x2)
    chosen = set(kernel_choice.choices().values())
    assert chosen == {policy} if policy != "auto" else chosen <= {"copy", "stack", "gather"}


def test_the_model_trains_identically_under_every_policy() -> None:
    torch.manual_seed(0)
    reference = shufflenetv2.build_model("shufflenet_v2_x0_5", num_classes=10).train()
    images = torch.randn(2, 3, 64, 64)
    results = {}
    for policy in ("copy", "stack", "gather", "auto"):
        kernel_choice.set_policy(policy)
        model = shufflenetv2.build_model("shufflenet_v2_x0_5", num_classes=10).train()
        model.load_state_dict(reference.state_dict())
        out = model(images)
        out.square().sum().backward()
        results[policy] = (out.detach(), model.conv1[0].weight.grad)
    for policy in ("stack", "gather", "auto"):
        assert torch.equal(results[policy][0], results["copy"][0])
        assert torch.equal(results[policy][1], results["copy"][1])


def test_compiled_graphs_use_the_eager_choice() -> None:
    # The compiled graph calls the registered operator, whose kernel makes (and caches) the
    # same choice as eager mode, at run time.
    kernel_choice.set_policy("gather")

    def join(x1, x2):
        a, b = ops.channel_shuffle_split(x1, x2)
        return ops.channel_shuffle_cat(a * 2, b + 1)

    x1, x2 = pair((2, 8, 3, 3))
    out = torch.compile(join, fullgraph=True)(x1, x2)
    assert torch.equal(out, join(x1, x2))
    ops_seen = {key[0] for key in kernel_choice.choices()}
    assert {"split", "cat"} <= ops_seen
    assert set(kernel_choice.choices().values()) == {"gather"}


def test_the_trainer_flag_offers_every_policy() -> None:
    from shufflenet_trainer.train.config import SHUFFLE_KERNELS, parse_config

    assert SHUFFLE_KERNELS == kernel_choice.POLICIES
    cfg = parse_config(["--dummy", "--shuffle-kernel", "stack"], world_size=1, rank=0)
    assert cfg.shuffle_kernel == "stack"
    assert parse_config(["--dummy"], world_size=1, rank=0).shuffle_kernel == "auto"


def test_summary_counts_the_choices() -> None:
    assert kernel_choice.summary() == "auto: none chosen yet"
    kernel_choice.set_policy("stack")
    ops.channel_shuffle_split(*pair())
    ops.channel_shuffle_cat(*pair())
    assert kernel_choice.summary() == "stack: stack x2"


def test_a_triton_kernel_off_cuda_is_refused_at_startup() -> None:
    from shufflenet_trainer.train.config import parse_config

    with pytest.raises(ConfigError, match="--shuffle-kernel triton runs on CUDA only"):
        parse_config(
            ["--dummy", "--device", "cpu", "--shuffle-kernel", "triton"], world_size=1, rank=0
        )


def test_one_kernel_under_two_names_is_measured_once() -> None:
    runs = {"copy": 0}

    def copy(x):
        runs["copy"] += 1
        return x * 2

    kernel_choice.choose("toy", {"copy": copy, "gather": copy}, _reference, (torch.ones(2),))
    assert runs["copy"] == 1 + kernel_choice.REPEATS
    (line,) = kernel_choice.report()
    assert line.endswith(": copy (copy " + line.split("(copy ")[1]) and "gather" not in line
