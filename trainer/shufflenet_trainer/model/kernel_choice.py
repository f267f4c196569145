"""Which kernel computes a channel-shuffle op, chosen by measurement (like cudnn.benchmark).

Every op of :mod:`shufflenet_trainer.model.ops` has several kernels that compute the same
permutation (:data:`KERNELS`): ``copy`` (strided copies into the output, the default),
``stack`` (one ``stack``/``cat`` per output into a pair-split view of it: fewer calls),
``gather`` (concatenate the inputs, then one strided copy per output: torchvision's
formulation, writing the op's output memory format), and ``triton`` (one gather kernel per
output; CUDA, or CPU under Triton's interpreter). At the first call for a key (op, device,
dtype, memory format, shapes) the policy decides:

- ``auto`` (default): on CPU, every candidate is checked against the reference formulation
  on the call's own inputs (a permutation must be bit-identical; one that differs or raises
  is dropped and logged once), then timed (best of a few interleaved repeats) and the
  fastest kept; ``copy`` is replaced only by a kernel at least ``MARGIN`` faster, and equal
  times keep the earlier candidate, so near-ties fall back to the default rather than to
  noise. On other devices ``copy`` is used unmeasured until a GPU run has proven the
  alternatives (docs/benchmarks.md).
- ``measure``: the same measurement on every device, Triton included on CUDA (opt-in).
- ``copy`` / ``stack`` / ``gather`` / ``triton``: that kernel, checked against the reference at its
  first call for each key (a wrong or failing forced kernel is an error, not a fallback).

The choice is cached per key for the process. Every kernel is an exact permutation, so the
choice never changes a value: ranks that choose differently still compute identical
numbers. Under ``torch.compile`` the ops are opaque to the compiler; the compiled graph
calls the op at run time, and its kernel looks up (or, the first time, makes) the same
cached choice eagerly, outside tracing (fake tensors never reach this module). During a
CUDA graph capture (``mode="reduce-overhead"``) a key not chosen yet gets ``copy`` without
caching; the eager warm-up iterations before capture normally make the choice first.

Set the policy with :func:`set_policy` (the trainer's ``--shuffle-kernel``) or the
``SHUFFLENET_SHUFFLE_KERNEL`` environment variable; :func:`report` lists the choices made.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from shufflenet_contract import env as contract_env

from ..errors import ConfigError

__all__ = [
    "KERNELS",
    "MARGIN",
    "POLICIES",
    "choose",
    "clear",
    "policy",
    "report",
    "reset",
    "set_policy",
    "summary",
]

log = logging.getLogger(__name__)

KERNELS = ("copy", "stack", "gather", "triton")
POLICIES = ("auto", "measure", *KERNELS)
ENV = contract_env.SHUFFLE_KERNEL
DEFAULT = "copy"
# A measured kernel replaces the default only when this much faster: the timing of a
# sub-millisecond op on a shared machine moves by more than a few percent between repeats.
MARGIN = 0.05
REPEATS = 5

Kernel = Callable[..., Any]
Key = tuple[Any, ...]

_policy: str | None = None
_env_policy: str | None = None
_cache: dict[Key, str] = {}
_timings: dict[Key, dict[str, float]] = {}
_dropped: set[tuple[str, str, str]] = set()


def set_policy(name: str) -> None:
    """Select the policy for choices not yet made; the cache is cleared."""
    if name not in POLICIES:
        raise ConfigError(
            f"--shuffle-kernel: unknown kernel policy {name!r}; choose one of {', '.join(POLICIES)}"
        )
    global _policy
    _policy = name
    clear()


def reset() -> None:
    """Back to the environment's policy (read again; auto when unset), with an empty cache."""
    global _policy, _env_policy
    _policy = _env_policy = None
    clear()


def policy() -> str:
    """The policy in force: set_policy's, else $SHUFFLENET_SHUFFLE_KERNEL, else auto."""
    if _policy is not None:
        return _policy
    global _env_policy
    if _env_policy is None:  # read once: this runs at every op call
        name = os.environ.get(ENV, "auto") or "auto"
        if name not in POLICIES:
            raise ConfigError(
                f"{ENV}={name!r} is not a kernel policy: set one of {', '.join(POLICIES)} "
                "or unset it"
            )
        _env_policy = name
    return _env_policy


def clear() -> None:
    _cache.clear()
    _timings.clear()
    _dropped.clear()


def memory_format_tag(x: Tensor) -> str:
    # A tensor contiguous in both formats (C == 1 or H == W == 1) counts as NCHW.
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def key_of(op: str, tensors: Sequence[Tensor], extra: tuple = ()) -> Key:
    # Hashable objects as they are (device, dtype): this runs at every op call.
    x = tensors[0]
    return (op, x.device, x.dtype, memory_format_tag(x), *(t.shape for t in tensors), extra)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, Tensor):
        return isinstance(got, Tensor) and got.shape == want.shape and torch.equal(got, want)
    return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _checked(
    op: str, name: str, kernel: Kernel, reference: Kernel, args: tuple, *, forced: bool
) -> bool:
    """Whether ``kernel`` equals the reference on these inputs; a forced kernel must."""
    try:
        ok = _same(kernel(*args), reference(*args))
        why = "differs from the reference"
    except Exception as exc:  # a candidate that cannot run these inputs is dropped
        if forced:
            raise
        ok, why = False, f"raised {type(exc).__name__}: {exc}"
    if ok:
        return True
    if forced:
        raise RuntimeError(f"shuffle kernel {name!r} {why} for {op}: not used")
    tag = (op, name, why)
    if tag not in _dropped:
        _dropped.add(tag)
        log.warning("shuffle kernel %r dropped for %s: %s", name, op, why)
    return False


def _best_times(kernels: dict[str, Kernel], args: tuple, device: torch.device) -> dict[str, float]:
    times = {name: float("inf") for name in kernels}
    for _ in range(REPEATS):  # interleaved, so drift hits all alike; the best counts
        for name, kernel in kernels.items():
            _sync(device)
            start = time.perf_counter()
            kernel(*args)
            _sync(device)
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def pick_fastest(times: dict[str, float], default: str = DEFAULT, margin: float = MARGIN) -> str:
    """The fastest kernel; the default stays unless another is ``margin`` faster.

    Ties go to the earlier entry of ``times``, so the choice is a pure function of the times.
    """
    best = min(times, key=lambda name: (times[name], list(times).index(name)))
    if default in times and times[best] > (1.0 - margin) * times[default]:
        return default
    return best


def choose(
    op: str,
    candidates: dict[str, Kernel],
    reference: Kernel,
    args: tuple,
    *,
    measurable: Sequence[str] = ("cpu",),
) -> Kernel:
    """The kernel for ``op`` on ``args`` (tensors first), chosen once per key.

    ``candidates`` are the kernels available on this device, in preference order (the
    default first); ``measurable`` names the device types where ``auto`` measures.
    """
    tensors = [a for a in args if isinstance(a, Tensor)]
    key = key_of(op, tensors, tuple(a for a in args if not isinstance(a, Tensor)))
    name = _cache.get(key)
    if name is not None:
        return candidates[name]
    mode = policy()
    device = tensors[0].device
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # Inside a CUDA graph capture nothing may synchronise: the default, not cached, so
        # the choice is still made at the next eager call.
        return candidates[DEFAULT]
    if mode in KERNELS:
        if mode not in candidates:
            raise ConfigError(
                f"--shuffle-kernel {mode}: not available on {device.type} for {op} "
                f"(available: {', '.join(candidates)}); use auto"
            )
        _checked(op, mode, candidates[mode], reference, args, forced=True)
        name = mode
    elif mode == "auto" and device.type not in measurable:
        name = DEFAULT if DEFAULT in candidates else next(iter(candidates))
    else:
        # A kernel listed under two names (one that serves as another) is measured once.
        distinct = {}
        for n, k in candidates.items():
            if all(k is not seen for seen in distinct.values()):
                distinct[n] = k
        with torch.no_grad():
            ok = {
                n: k
                for n, k in distinct.items()
                if _checked(op, n, k, reference, args, forced=False)
            }
            if not ok:
                raise RuntimeError(f"no shuffle kernel computes {op} correctly on {device}")
            _timings[key] = _best_times(ok, args, device)
        name = pick_fastest(_timings[key])
    _cache[key] = name
    return candidates[name]


def report() -> list[str]:
    """One line per choice made: key, kernel, and the measured times when measured."""
    lines = []
    for key, name in sorted(_cache.items(), key=lambda kv: repr(kv[0])):
        op, device, dtype, fmt, first, *_, extra = key
        shape = "x".join(str(s) for s in first)
        dtype_name = str(dtype).removeprefix("torch.")
        line = (
            f"{op} {device} {dtype_name} {fmt} {shape}{' ' + repr(extra) if extra else ''}: {name}"
        )
        times = _timings.get(key)
        if times:
            line += " (" + ", ".join(f"{n} {t * 1e6:.0f} us" for n, t in times.items()) + ")"
        lines.append(line)
    return lines


def summary() -> str:
    """One line for the run's log: the policy and how many op shapes each kernel serves."""
    counts: dict[str, int] = {}
    for name in _cache.values():
        counts[name] = counts.get(name, 0) + 1
    made = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))
    return f"{policy()}: {made or 'none chosen yet'}"


def choices() -> dict[Key, str]:
    """The cache itself, for tests and benchmarks."""
    return dict(_cache)
