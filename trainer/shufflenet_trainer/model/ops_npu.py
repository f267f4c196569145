"""Ascend kernels for the channel-shuffle ops: gathers with precomputed channel indices.

Strided copies into an interleaved layout (the generic kernels) become slow non-contiguous
transfers on Ascend; a channel ``index_select`` over the concatenated halves is one
contiguous gather there, which is how torch_npu's own ``contrib.module.ChannelShuffle``
does it. The index arithmetic is plain torch and runs (and is tested) on any device; only
:func:`register` touches torch_npu.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _split_indices(channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel indices into cat(x1, x2) (2C channels) for the outputs a and b."""
    half = channels // 2
    i = torch.arange(half)
    a = torch.stack((i, i + channels), dim=1).flatten()  # x1[i], x2[i] for i < C/2
    b = a + half  # the same for the second halves
    return a.to(device), b.to(device)


@functools.lru_cache(maxsize=64)
def _unsplit_indices(channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel indices into cat(a, b) that give back x1 and x2."""
    evens = torch.arange(0, channels, 2)
    x1 = torch.cat((evens, evens + channels))  # a's even channels, then b's
    return x1.to(device), (x1 + 1).to(device)


@functools.lru_cache(maxsize=64)
def _cat_indices(channels: int, device: torch.device) -> Tensor:
    i = torch.arange(channels)
    return torch.stack((i, i + channels), dim=1).flatten().to(device)


def index_shuffle_split(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    both = torch.cat((x1, x2), dim=1)
    idx_a, idx_b = _split_indices(x1.shape[1], x1.device)
    return both.index_select(1, idx_a), both.index_select(1, idx_b)


def index_unshuffle_split(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    both = torch.cat((a, b), dim=1)
    idx_1, idx_2 = _unsplit_indices(a.shape[1], a.device)
    return both.index_select(1, idx_1), both.index_select(1, idx_2)


def index_shuffle_cat(x1: Tensor, x2: Tensor) -> Tensor:
    return torch.cat((x1, x2), dim=1).index_select(1, _cat_indices(x1.shape[1], x1.device))


@functools.lru_cache(maxsize=64)
def _uncat_indices(channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (
        torch.arange(0, channels, 2, device=device),
        torch.arange(1, channels, 2, device=device),
    )


@functools.lru_cache(maxsize=64)
def _shuffle_indices(channels: int, groups: int, device: torch.device) -> Tensor:
    return torch.arange(channels).view(groups, channels // groups).t().flatten().to(device)


def index_unshuffle_cat(grad: Tensor) -> tuple[Tensor, Tensor]:
    evens, odds = _uncat_indices(grad.shape[1], grad.device)
    return grad.index_select(1, evens), grad.index_select(1, odds)


def index_shuffle(x: Tensor, groups: int) -> Tensor:
    return x.index_select(1, _shuffle_indices(x.shape[1], groups, x.device))


def register() -> None:  # pragma: no cover - needs torch_npu and an Ascend device
    """Register the index kernels for the "npu" device type (torch_npu's PrivateUse1)."""
    import torch_npu  # noqa: F401 - importing it names the PrivateUse1 backend "npu"

    from . import ops

    ops.channel_shuffle_split_op.register_kernel("npu")(index_shuffle_split)
    ops.channel_unshuffle_split_op.register_kernel("npu")(index_unshuffle_split)
    ops.channel_shuffle_cat_op.register_kernel("npu")(index_shuffle_cat)
    ops.channel_unshuffle_cat_op.register_kernel("npu")(index_unshuffle_cat)
    ops.channel_shuffle_op.register_kernel("npu")(index_shuffle)
