"""The fused channel-shuffle ops against torchvision's formulation."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from shufflenet_trainer.model import ops, ops_npu

FORMATS = [torch.contiguous_format, torch.channels_last]


def pair(shape=(2, 6, 3, 4), dtype=torch.float32, memory_format=torch.contiguous_format):
    return tuple(
        torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format) for _ in range(2)
    )


def test_split_follows_the_published_permutation() -> None:
    # out[2i] = cat[i], out[2i+1] = cat[C+i]: with channel values = channel indices,
    # the outputs spell out the permutation itself.
    c = 8
    x1 = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
    x2 = x1 + c
    a, b = ops.channel_shuffle_split(x1, x2)
    shuffled = torch.cat((a, b), dim=1).flatten().tolist()
    assert shuffled == [v for i in range(c) for v in (i, c + i)]


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_split_equals_reference(memory_format, dtype) -> None:
    x1, x2 = pair((3, 58, 7, 5), dtype, memory_format)
    a, b = ops.channel_shuffle_split(x1, x2)
    ref_a, ref_b = ops.reference_channel_shuffle_split(x1, x2)
    assert torch.equal(a, ref_a) and torch.equal(b, ref_b)
    # Same memory format in, same out: no silent conversion to NCHW.
    assert a.is_contiguous(memory_format=memory_format)
    assert b.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_cat_and_single_shuffle_equal_reference(memory_format) -> None:
    x1, x2 = pair((2, 24, 5, 6), memory_format=memory_format)
    out = ops.channel_shuffle_cat(x1, x2)
    assert torch.equal(out, ops.reference_channel_shuffle_cat(x1, x2))
    assert out.is_contiguous(memory_format=memory_format)
    for groups in (1, 2, 3, 4, 8):
        assert torch.equal(
            ops.channel_shuffle(x1, groups), ops.reference_channel_shuffle(x1, groups)
        )


@pytest.mark.parametrize("memory_format", FORMATS)
def test_gradients_equal_reference(memory_format) -> None:
    x1, x2 = pair((2, 10, 4, 4), memory_format=memory_format)
    grads = torch.randn(2, 10, 4, 4), torch.randn(2, 10, 4, 4)

    def grads_of(split):
        p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        torch.autograd.backward(split(p1, p2), grads)
        return p1.grad, p2.grad

    fused, reference = (
        grads_of(ops.channel_shuffle_split),
        grads_of(ops.reference_channel_shuffle_split),
    )
    assert torch.equal(fused[0], reference[0]) and torch.equal(fused[1], reference[1])


def test_one_output_unused_still_backpropagates() -> None:
    p1, p2 = (t.requires_grad_() for t in pair())
    a, _ = ops.channel_shuffle_split(p1, p2)
    a.sum().backward()
    # Only the first halves of the inputs reach `a`.
    assert p1.grad[:, :3].eq(1).all() and p1.grad[:, 3:].eq(0).all()
    assert p2.grad[:, :3].eq(1).all() and p2.grad[:, 3:].eq(0).all()


def test_gradcheck_and_second_order() -> None:
    x1, x2 = (t.requires_grad_() for t in pair(dtype=torch.float64))
    assert gradcheck(ops.channel_shuffle_split, (x1, x2))
    assert gradgradcheck(ops.channel_shuffle_split, (x1, x2))
    assert gradcheck(ops.channel_shuffle_cat, (x1, x2))
    assert gradgradcheck(ops.channel_shuffle_cat, (x1, x2))
    assert gradcheck(lambda x: ops.channel_shuffle(x, 3), (x1,))
    assert gradgradcheck(lambda x: ops.channel_shuffle(x, 3), (x1,))


@pytest.mark.parametrize(
    "op, args",
    [
        (ops.channel_shuffle_split_op, 2),
        (ops.channel_shuffle_cat_op, 2),
        (ops.channel_shuffle_op, 1),
    ],
)
def test_opcheck(op, args) -> None:
    # torch.library's own consistency checks: schema, fake kernel, autograd registration.
    x1, x2 = (t.requires_grad_() for t in pair(dtype=torch.float64))
    torch.library.opcheck(op, (x1, x2) if args == 2 else (x1, 2))


def test_compiles_fullgraph_and_matches_eager() -> None:
    def join(x1, x2):
        a, b = ops.channel_shuffle_split(x1, x2)
        return ops.channel_shuffle_cat(a * 2, b + 1)

    compiled = torch.compile(join, fullgraph=True)  # inductor, the default backend
    x1, x2 = pair((2, 8, 3, 3))
    p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = compiled(p1, p2)
    assert torch.equal(out, join(x1, x2))
    out.square().sum().backward()
    q1, q2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    join(q1, q2).square().sum().backward()
    assert torch.equal(p1.grad, q1.grad) and torch.equal(p2.grad, q2.grad)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="even channel count"):
        ops.channel_shuffle_split(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="one shape"):
        ops.channel_shuffle_split(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="groups"):
        ops.channel_shuffle(torch.zeros(1, 6, 2, 2), 4)


def test_npu_index_kernels_compute_the_same_permutations() -> None:
    # The Ascend kernels' index arithmetic, run on the CPU.
    x1, x2 = pair((2, 12, 3, 3))
    a, b = ops.channel_shuffle_split(x1, x2)
    na, nb = ops_npu.index_shuffle_split(x1, x2)
    assert torch.equal(na, a) and torch.equal(nb, b)
    u1, u2 = ops_npu.index_unshuffle_split(a, b)
    assert torch.equal(u1, x1) and torch.equal(u2, x2)
    joined = ops.channel_shuffle_cat(x1, x2)
    assert torch.equal(ops_npu.index_shuffle_cat(x1, x2), joined)
    f1, f2 = ops_npu.index_unshuffle_cat(joined)
    assert torch.equal(f1, x1) and torch.equal(f2, x2)
    assert torch.equal(ops_npu.index_shuffle(x1, 3), ops.channel_shuffle(x1, 3))
