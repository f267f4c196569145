"""The Triton kernels of the channel-shuffle ops, run on the CPU under Triton's interpreter.

TRITON_INTERPRET=1 makes ``triton.jit`` build interpreted kernels that run on CPU tensors;
it is read when the kernel module is first imported, which happens inside the fixture.
"""

import pytest
import torch

from shufflenet_trainer.model import kernel_choice, ops

FORMATS = [torch.contiguous_format, torch.channels_last]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Odd spatial sizes, one sample, the fewest channels split allows, one 1x1 map.
SHAPES = [(2, 6, 3, 5), (1, 2, 7, 1), (3, 4, 1, 1), (1, 10, 5, 3)]


@pytest.fixture(autouse=True)
def triton_interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel_choice.set_policy("triton")
    yield
    kernel_choice.reset()


def pair(shape, dtype, memory_format):
    return tuple(
        torch.randn(shape).to(dtype).contiguous(memory_format=memory_format) for _ in range(2)
    )


def grads_of(fn, x1, x2, grads):
    p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = fn(p1, p2)
    torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)
    return out, p1.grad, p2.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_values_and_gradients(shape, memory_format, dtype) -> None:
    x1, x2 = pair(shape, dtype, memory_format)
    grads = pair(shape, dtype, memory_format)
    (a, b), g1, g2 = grads_of(ops.channel_shuffle_split, x1, x2, grads)
    (ra, rb), r1, r2 = grads_of(ops.reference_channel_shuffle_split, x1, x2, grads)
    assert torch.equal(a, ra) and torch.equal(b, rb)
    assert torch.equal(g1, r1) and torch.equal(g2, r2)
    assert a.is_contiguous(memory_format=memory_format)
    assert g1.is_contiguous(memory_format=memory_format)
    used = {key[0]: name for key, name in kernel_choice.choices().items()}
    assert used == {"split": "triton", "unsplit": "triton"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_values_and_gradients(shape, memory_format, dtype) -> None:
    x1, x2 = pair(shape, dtype, memory_format)
    n, c, h, w = shape
    grad = torch.randn(n, 2 * c, h, w).to(dtype).contiguous(memory_format=memory_format)
    out, g1, g2 = grads_of(ops.channel_shuffle_cat, x1, x2, (grad,))
    ref, r1, r2 = grads_of(ops.reference_channel_shuffle_cat, x1, x2, (grad,))
    assert torch.equal(out, ref)
    assert torch.equal(g1, r1) and torch.equal(g2, r2)
    assert out.is_contiguous(memory_format=memory_format)
    used = {key[0]: name for key, name in kernel_choice.choices().items()}
    assert used == {"cat": "triton", "uncat": "triton"}


def test_odd_channel_count_for_cat_and_strided_inputs() -> None:
    # cat takes any channel count; inputs that are views (no dense format) are gathered
    # from a contiguous copy.
    x = torch.randn(2, 6, 4, 5)
    x1, x2 = x[:, :3], x[:, 3:]
    assert torch.equal(ops.channel_shuffle_cat(x1, x2), ops.reference_channel_shuffle_cat(x1, x2))


def test_second_order_through_the_registered_operator() -> None:
    x1, x2 = (t.double().requires_grad_() for t in pair((1, 4, 3, 3), torch.float32, FORMATS[0]))
    assert torch.autograd.gradgradcheck(ops.channel_shuffle_split_op, (x1, x2))
