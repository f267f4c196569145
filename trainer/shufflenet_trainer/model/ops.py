"""Channel shuffle as fused custom operators.

ShuffleNetV2 joins two blocks with concat -> shuffle(groups=2) -> split. Written with plain
tensor ops (as torchvision does) that costs a concatenated copy plus a transposed
``.contiguous()`` copy per block, and the transposed copy is slow on Ascend NPUs. Each
output channel is just one input channel, so the whole join is a permutation: these ops
write every output element once, straight from the two halves, in the input's memory
format (NCHW or channels_last).

With ``cat = concat(x1, x2)`` (``2C`` channels) and ``shuffled[2i] = cat[i]``,
``shuffled[2i+1] = cat[C+i]``, ``channel_shuffle_split(x1, x2)`` returns the two halves
of ``shuffled``; so ``a`` interleaves the first halves of ``x1`` and ``x2`` and ``b`` their
second halves. The backward is the inverse permutation, itself an op whose backward is
the forward, so higher-order gradients and ``torch.compile(fullgraph=True)`` both work.

``channel_shuffle_cat(x1, x2)`` is the same join without the split (the end of a stage)
and ``channel_shuffle(x, groups)`` the general single-tensor shuffle.

Kernels: on CPU and CUDA several kernels compute each permutation (``copy``, ``stack``,
``gather``, and ``triton`` from :mod:`shufflenet_trainer.model.ops_triton`);
:mod:`shufflenet_trainer.model.kernel_choice` picks one per (op, device, dtype, memory format,
shapes) by measurement, checked against the reference. On Ascend, the index-based kernels of
:mod:`shufflenet_trainer.model.ops_npu` are registered when torch_npu is installed.

Two ways in: the public functions below (what the model calls) and the registered operators
(``torch.ops.shufflenet.*``, the ``*_op`` objects). In eager mode on CPU and CUDA the public
functions run the kernels under ``torch.autograd.Function`` (cheaper per call); under
``torch.compile``, on other devices and for tensor subclasses they call the operator, which
the compiled graph runs opaquely with the same eager-cached kernel choice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import kernel_choice

__all__ = [
    "channel_shuffle",
    "channel_shuffle_cat",
    "channel_shuffle_split",
    "reference_channel_shuffle",
    "reference_channel_shuffle_cat",
    "reference_channel_shuffle_split",
]


def _check_pair(x1: Tensor, x2: Tensor, *, even: bool) -> None:
    if x1.dim() != 4 or x1.shape != x2.shape:
        raise ValueError(
            f"channel shuffle expects two NCHW tensors of one shape, got {tuple(x1.shape)} "
            f"and {tuple(x2.shape)}"
        )
    if x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(
            f"channel shuffle expects one dtype and device, got {x1.dtype}/{x1.device} "
            f"and {x2.dtype}/{x2.device}"
        )
    if even and x1.shape[1] % 2:
        raise ValueError(f"channel_shuffle_split needs an even channel count, got {x1.shape[1]}")


def _interleave_into(out: Tensor, even: Tensor, odd: Tensor) -> None:
    """out[:, 2i] = even[:, i] and out[:, 2i+1] = odd[:, i], in out's memory format.

    Two strided copies into a pair-split view of ``out``. On CPU (NCHW) each copies at the
    speed of a plain ``copy_`` of the same bytes, and on CUDA they beat a stack or cat into
    the same view (docs/benchmarks.md).
    """
    pairs = out.unflatten(1, (-1, 2))  # splitting a dim is always a view
    pairs.select(2, 0).copy_(even)
    pairs.select(2, 1).copy_(odd)


def _concat_into(out: Tensor, first: Tensor, second: Tensor) -> None:
    """out = cat((first, second), 1) from strided inputs, in out's memory format."""
    half = first.shape[1]
    out[:, :half].copy_(first)
    out[:, half:].copy_(second)


def _check_groups(x: Tensor, groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle expects an NCHW tensor, got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(
            f"channel_shuffle: {x.shape[1]} channels do not split into {groups} groups"
        )


def _empty_like(like: Tensor) -> Tensor:
    # empty_like keeps a dense input's strides (NCHW or channels_last) and is the cheapest
    # allocation call; other strides get the format torch suggests for them.
    return torch.empty_like(like)


def _empty_with_channels(like: Tensor, channels: int) -> Tensor:
    """An uninitialised tensor like ``like`` with another channel count, same memory format."""
    # A tensor contiguous in both formats (C == 1 or H == W == 1) counts as NCHW.
    channels_last = not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (like.shape[0], channels, *like.shape[2:])
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


# --- kernels: each computes one op's permutation; kernel_choice picks one per call key ------


def _copy_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    half = x1.shape[1] // 2
    a, b = _empty_like(x1), _empty_like(x2)
    _interleave_into(a, x1.narrow(1, 0, half), x2.narrow(1, 0, half))
    _interleave_into(b, x1.narrow(1, half, half), x2.narrow(1, half, half))
    return a, b


def _copy_unsplit(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a_pairs, b_pairs = a.unflatten(1, (-1, 2)), b.unflatten(1, (-1, 2))
    x1, x2 = _empty_like(a), _empty_like(b)
    _concat_into(x1, a_pairs.select(2, 0), b_pairs.select(2, 0))
    _concat_into(x2, a_pairs.select(2, 1), b_pairs.select(2, 1))
    return x1, x2


def _copy_cat(x1: Tensor, x2: Tensor) -> Tensor:
    out = _empty_with_channels(x1, 2 * x1.shape[1])
    _interleave_into(out, x1, x2)
    return out


def _copy_uncat(grad: Tensor) -> tuple[Tensor, Tensor]:
    pairs = grad.unflatten(1, (-1, 2))
    first = _empty_with_channels(grad, grad.shape[1] // 2)
    second = _empty_with_channels(grad, grad.shape[1] // 2)
    first.copy_(pairs.select(2, 0))
    second.copy_(pairs.select(2, 1))
    return first, second


def _stack_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    # One stack per output, written through a pair-split view: fewer calls than the copies
    # (what wins at small sizes), a different memory walk at large ones.
    half = x1.shape[1] // 2
    a, b = _empty_like(x1), _empty_like(x2)
    torch.stack(
        (x1.narrow(1, 0, half), x2.narrow(1, 0, half)), dim=2, out=a.unflatten(1, (half, 2))
    )
    torch.stack(
        (x1.narrow(1, half, half), x2.narrow(1, half, half)), dim=2, out=b.unflatten(1, (half, 2))
    )
    return a, b


def _stack_unsplit(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    x1, x2 = _empty_like(a), _empty_like(b)
    torch.cat((a[:, 0::2], b[:, 0::2]), dim=1, out=x1)
    torch.cat((a[:, 1::2], b[:, 1::2]), dim=1, out=x2)
    return x1, x2


def _stack_cat(x1: Tensor, x2: Tensor) -> Tensor:
    c = x1.shape[1]
    out = _empty_with_channels(x1, 2 * c)
    torch.stack((x1, x2), dim=2, out=out.unflatten(1, (c, 2)))
    return out


def _gather_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    # torchvision's order of work (concatenate, then one transposed copy), but each output
    # written straight in the inputs' memory format and as its own tensor.
    c = x1.shape[1]
    # cat channel p * C + h * C/2 + i goes to output h, channel 2i + p.
    both = torch.cat((x1, x2), dim=1).unflatten(1, (2, 2, c // 2))
    a, b = _empty_like(x1), _empty_like(x2)
    a.unflatten(1, (c // 2, 2)).copy_(both.select(2, 0).transpose(1, 2))
    b.unflatten(1, (c // 2, 2)).copy_(both.select(2, 1).transpose(1, 2))
    return a, b


def _gather_unsplit(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    c = a.shape[1]
    # cat channel h * C + 2i + p holds x_p's channel h * C/2 + i.
    both = torch.cat((a, b), dim=1).unflatten(1, (2, c // 2, 2))
    x1, x2 = _empty_like(a), _empty_like(b)
    x1.unflatten(1, (2, c // 2)).copy_(both.select(3, 0))
    x2.unflatten(1, (2, c // 2)).copy_(both.select(3, 1))
    return x1, x2


def _gather_cat(x1: Tensor, x2: Tensor) -> Tensor:
    c = x1.shape[1]
    out = _empty_with_channels(x1, 2 * c)
    both = torch.cat((x1, x2), dim=1).unflatten(1, (2, c))
    out.unflatten(1, (c, 2)).copy_(both.transpose(1, 2))
    return out


def _reference_unsplit(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    both = torch.cat((a, b), dim=1)
    return both[:, 0::2], both[:, 1::2]


def _reference_uncat(grad: Tensor) -> tuple[Tensor, Tensor]:
    return grad[:, 0::2], grad[:, 1::2]


_COPY = {"split": _copy_split, "unsplit": _copy_unsplit, "cat": _copy_cat, "uncat": _copy_uncat}
# De-interleaving one tensor needs no concatenation or stack: there both are the copy kernel.
_STACK = {
    "split": _stack_split,
    "unsplit": _stack_unsplit,
    "cat": _stack_cat,
    "uncat": _copy_uncat,
}
_GATHER = {
    "split": _gather_split,
    "unsplit": _gather_unsplit,
    "cat": _gather_cat,
    "uncat": _copy_uncat,
}


def _reference(op: str) -> Callable[..., Any]:
    return {
        "split": reference_channel_shuffle_split,
        "unsplit": _reference_unsplit,
        "cat": reference_channel_shuffle_cat,
        "uncat": _reference_uncat,
    }[op]


@functools.lru_cache(maxsize=16)
def _candidates(op: str, with_triton: bool) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {
        "copy": _COPY[op],
        "stack": _STACK[op],
        "gather": _GATHER[op],
    }
    if with_triton:
        from . import ops_triton

        found["triton"] = getattr(ops_triton, op)
    return found


def _kernel(op: str, *args: Tensor) -> Any:
    """Run ``op`` with the kernel chosen for these inputs (kernel_choice)."""
    policy = kernel_choice.policy()
    candidates = _candidates(op, _triton_usable(args[0].device.type, policy))
    if policy == "auto" and args[0].device.type != "cpu":
        # Nothing is measured there yet: the default kernel, without a lookup per call.
        return candidates["copy"](*args)
    return kernel_choice.choose(op, candidates, _reference(op), args)(*args)


def _triton_usable(device_type: str, policy: str) -> bool:
    """Triton kernels are candidates on CUDA when triton is installed; on the CPU only when
    forced under Triton's interpreter (the tests): interpreted, they are far too slow to
    be measured against the others."""
    if device_type == "cuda":
        return _has_triton()
    return (
        device_type == "cpu"
        and policy == "triton"
        and os.environ.get("TRITON_INTERPRET") == "1"
        and _has_triton()
    )


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


# --- the registered operators (torch.compile, non-CPU/CUDA devices such as Ascend NPUs) -----


@torch.library.custom_op("shufflenet::channel_shuffle_split", mutates_args=())
def channel_shuffle_split_op(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Fused ``cat((x1, x2), 1)`` -> ``channel_shuffle(groups=2)`` -> ``chunk(2, 1)``."""
    _check_pair(x1, x2, even=True)
    return _kernel("split", x1, x2)


@torch.library.custom_op("shufflenet::channel_unshuffle_split", mutates_args=())
def channel_unshuffle_split_op(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of channel_shuffle_split, i.e. its backward."""
    _check_pair(a, b, even=True)
    return _kernel("unsplit", a, b)


@channel_shuffle_split_op.register_fake
def _(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    _check_pair(x1, x2, even=True)
    return _empty_like(x1), _empty_like(x2)


@channel_unshuffle_split_op.register_fake
def _(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    _check_pair(a, b, even=True)
    return _empty_like(a), _empty_like(b)


def _both(grad_1: Tensor | None, grad_2: Tensor | None) -> tuple[Tensor, Tensor]:
    # Both outputs of these ops have one shape, so a missing gradient is zeros like the other.
    if grad_1 is None:
        grad_1 = torch.zeros_like(grad_2)
    if grad_2 is None:
        grad_2 = torch.zeros_like(grad_1)
    return grad_1, grad_2


def _no_context(ctx, inputs, output) -> None:
    # A permutation's backward needs neither inputs nor outputs: nothing is saved.
    pass


def _split_backward(ctx, grad_a: Tensor | None, grad_b: Tensor | None):
    return channel_unshuffle_split_op(*_both(grad_a, grad_b))


def _unsplit_backward(ctx, grad_1: Tensor | None, grad_2: Tensor | None):
    return channel_shuffle_split_op(*_both(grad_1, grad_2))


channel_shuffle_split_op.register_autograd(_split_backward, setup_context=_no_context)
channel_unshuffle_split_op.register_autograd(_unsplit_backward, setup_context=_no_context)


@torch.library.custom_op("shufflenet::channel_shuffle_cat", mutates_args=())
def channel_shuffle_cat_op(x1: Tensor, x2: Tensor) -> Tensor:
    """Fused ``channel_shuffle(cat((x1, x2), 1), groups=2)``: one write per element."""
    _check_pair(x1, x2, even=False)
    return _kernel("cat", x1, x2)


@torch.library.custom_op("shufflenet::channel_unshuffle_cat", mutates_args=())
def channel_unshuffle_cat_op(grad: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of channel_shuffle_cat: de-interleave into the two halves."""
    return _kernel("uncat", grad)


@channel_shuffle_cat_op.register_fake
def _(x1: Tensor, x2: Tensor) -> Tensor:
    _check_pair(x1, x2, even=False)
    return _empty_with_channels(x1, 2 * x1.shape[1])


@channel_unshuffle_cat_op.register_fake
def _(grad: Tensor) -> tuple[Tensor, Tensor]:
    half = grad.shape[1] // 2
    return _empty_with_channels(grad, half), _empty_with_channels(grad, half)


def _cat_backward(ctx, grad: Tensor):
    return channel_unshuffle_cat_op(grad)


def _uncat_backward(ctx, grad_1: Tensor | None, grad_2: Tensor | None):
    return channel_shuffle_cat_op(*_both(grad_1, grad_2))


channel_shuffle_cat_op.register_autograd(_cat_backward, setup_context=_no_context)
channel_unshuffle_cat_op.register_autograd(_uncat_backward, setup_context=_no_context)


@torch.library.custom_op("shufflenet::channel_shuffle", mutates_args=())
def channel_shuffle_op(x: Tensor, groups: int) -> Tensor:
    """``out[:, j * groups + g] = x[:, g * (C // groups) + j]``, keeping x's memory format."""
    _check_groups(x, groups)
    return _copy_shuffle(x, groups)


def _copy_shuffle(x: Tensor, groups: int) -> Tensor:
    out = _empty_like(x)
    per_group = x.shape[1] // groups
    out.unflatten(1, (per_group, groups)).copy_(x.unflatten(1, (groups, per_group)).transpose(1, 2))
    return out


@channel_shuffle_op.register_fake
def _(x: Tensor, groups: int) -> Tensor:
    _check_groups(x, groups)
    return _empty_like(x)


def _shuffle_setup(ctx, inputs, output) -> None:
    x, groups = inputs
    ctx.groups = groups
    ctx.channels = x.shape[1]


def _shuffle_backward(ctx, grad: Tensor):
    # Shuffling C channels with g groups is undone by shuffling with C // g groups.
    return channel_shuffle_op(grad, ctx.channels // ctx.groups), None


channel_shuffle_op.register_autograd(_shuffle_backward, setup_context=_shuffle_setup)


# --- the eager fast path: the same kernels under plain autograd Functions -----------------
#
# A call through the registered operator crosses the C++ dispatcher twice (autograd, then
# the device kernel) and runs custom_op's Python layers on both sides. In eager mode on CPU
# and CUDA, where the registered kernel is this module's own, the public functions below
# call the kernels through autograd.Function instead (docs/benchmarks.md: where the time of
# a call goes). Under torch.compile, for other devices (Ascend kernels register against the
# operator) and for tensor subclasses, they call the operator. The backward of each
# Function is the inverse kernel; under create_graph it is the inverse Function, so
# higher-order gradients work as with the operator.


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _kernel("split", x1, x2)

    @staticmethod
    def backward(ctx, grad_a: Tensor, grad_b: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph: this backward is differentiated too
            return _Unsplit.apply(grad_a, grad_b)
        return _kernel("unsplit", grad_a, grad_b)


class _Unsplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _kernel("unsplit", a, b)

    @staticmethod
    def backward(ctx, grad_1: Tensor, grad_2: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            return _Split.apply(grad_1, grad_2)
        return _kernel("split", grad_1, grad_2)


class _Cat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor) -> Tensor:  # type: ignore[override]
        return _kernel("cat", x1, x2)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            return _Uncat.apply(grad)
        return _kernel("uncat", grad)


class _Uncat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _kernel("uncat", grad)

    @staticmethod
    def backward(ctx, grad_1: Tensor, grad_2: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            return _Cat.apply(grad_1, grad_2)
        return _kernel("cat", grad_1, grad_2)


class _Shuffle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, groups: int) -> Tensor:  # type: ignore[override]
        ctx.inverse_groups = x.shape[1] // groups
        return _copy_shuffle(x, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _Shuffle.apply(grad, ctx.inverse_groups), None


_EAGER_DEVICES = frozenset({"cpu", "cuda"})


def _eager(x: Tensor) -> bool:
    return (
        type(x) is Tensor and x.device.type in _EAGER_DEVICES and not torch.compiler.is_compiling()
    )


def channel_shuffle_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Fused ``cat((x1, x2), 1)`` -> ``channel_shuffle(groups=2)`` -> ``chunk(2, 1)``.

    Two new tensors in the inputs' memory format. Operator: ``shufflenet::channel_shuffle_split``.
    """
    if _eager(x1):
        _check_pair(x1, x2, even=True)
        return _Split.apply(x1, x2)
    return channel_shuffle_split_op(x1, x2)


def channel_shuffle_cat(x1: Tensor, x2: Tensor) -> Tensor:
    """Fused ``channel_shuffle(cat((x1, x2), 1), groups=2)``: one write per element.

    Operator: ``shufflenet::channel_shuffle_cat``.
    """
    if _eager(x1):
        _check_pair(x1, x2, even=False)
        return _Cat.apply(x1, x2)
    return channel_shuffle_cat_op(x1, x2)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """``out[:, j * groups + g] = x[:, g * (C // groups) + j]``, keeping x's memory format.

    Operator: ``shufflenet::channel_shuffle``.
    """
    if _eager(x):
        _check_groups(x, groups)
        return _Shuffle.apply(x, groups)
    return channel_shuffle_op(x, groups)


# --- the reference (torchvision's formulation), selected by --shuffle reference -----------


def reference_channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision's channel shuffle: view, transpose, ``.contiguous()``, view."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def reference_channel_shuffle_cat(x1: Tensor, x2: Tensor) -> Tensor:
    return reference_channel_shuffle(torch.cat((x1, x2), dim=1), 2)


def reference_channel_shuffle_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    a, b = reference_channel_shuffle_cat(x1, x2).chunk(2, dim=1)
    return a, b


# --- device-specific kernels ----------------------------------------------------------------

if importlib.util.find_spec("torch_npu") is not None:  # pragma: no cover - Ascend only
    from . import ops_npu

    ops_npu.register()
