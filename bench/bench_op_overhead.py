"""Where the fixed cost of one channel-shuffle call goes: tiny tensors, so copies cost ~nothing.

Run: python bench/bench_op_overhead.py [--device cpu] [--calls 2000] [--rounds 7] [--json FILE]

Each row times ``channel_shuffle_split`` (or a piece of it) on two 1x4x2x2 tensors, best of
``rounds`` rounds of ``calls`` calls, the rows taking turns round by round. Rows:
- ``operator, forward+backward``: the registered custom op (torch.library.custom_op layers,
  dispatcher, autograd wrapper), as torch.compile and Ascend kernels see it;
- ``public function, forward+backward``: what the model calls (the eager fast path);
- the same two forward only (inputs without grad), the kernel alone (allocation + copies),
  the allocation alone, and torchvision's formulation, forward only and forward+backward.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from shufflenet_trainer.model import ops


def best_us(rows: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    for fn in rows.values():
        for _ in range(calls // 10):
            fn()
    best = {name: float("inf") for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return best


def rows_for(device: torch.device) -> dict[str, Callable[[], object]]:
    x1, x2 = (torch.randn(1, 4, 2, 2, device=device) for _ in range(2))
    p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    grad = torch.ones_like(x1)

    def fwd_bwd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            a, b = fn(p1, p2)
            torch.autograd.backward((a, b), (grad, grad))
            p1.grad = p2.grad = None

        return run

    op = torch.ops.shufflenet.channel_shuffle_split.default
    return {
        "operator, forward+backward": fwd_bwd(op),
        "public function, forward+backward": fwd_bwd(ops.channel_shuffle_split),
        "torchvision formulation, forward+backward": fwd_bwd(ops.reference_channel_shuffle_split),
        "operator, forward": lambda: op(x1, x2),
        "public function, forward": lambda: ops.channel_shuffle_split(x1, x2),
        "torchvision formulation, forward": lambda: ops.reference_channel_shuffle_split(x1, x2),
        "kernel alone (copy)": lambda: ops._copy_split(x1, x2),
        "allocation alone (2 outputs)": lambda: (ops._empty_like(x1), ops._empty_like(x2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)  # the cost per call, not parallel speed-up
    times = best_us(rows_for(device), args.calls, args.rounds)
    print(
        f"channel_shuffle_split on two 1x4x2x2 tensors, {device}, 1 thread, "
        f"best of {args.rounds} x {args.calls} calls, torch {torch.__version__}"
    )
    for name, us in times.items():
        print(f"  {name:<44}{us:>8.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "us_per_call": times}, f, indent=2)


if __name__ == "__main__":
    main()
