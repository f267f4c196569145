"""Channel shuffle forward+backward: fused op vs torchvision's formulation vs a plain copy.

Also each kernel of the fused op alone (``kernel copy`` etc.: the split kernel, then its
inverse on the gradients, without autograd), the candidates kernel_choice measures.

Run: python bench/bench_shuffle.py [--device cpu|cuda] [--shape 64,58,28,28] [--repeat 100]
All variants run in this one process on the same tensors, interleaved round by round; each
figure is the best (minimum) time over the repeats, since interference from other work on
the machine only ever adds time. The figures that matter are the ratios.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch

from shufflenet_trainer.model import ops
from shufflenet_trainer.train.device import synchronize


def best_ms(variants: dict[str, Callable[[], object]], device: torch.device, repeat: int) -> dict:
    """Best time of each variant, the variants taking turns so that drift hits all alike."""
    for fn in variants.values():
        for _ in range(max(5, repeat // 10)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) * 1e3 for name, t in times.items()}


def _fwd_bwd(split: Callable, p1: torch.Tensor, p2: torch.Tensor, grad: torch.Tensor) -> None:
    a, b = split(p1, p2)
    torch.autograd.backward((a, b), (grad, grad))
    p1.grad = p2.grad = None


def _kernel_pairs(device: torch.device) -> list[tuple[str, Callable, Callable]]:
    split = ops._candidates("split", device.type == "cuda" and ops._has_triton())
    unsplit = ops._candidates("unsplit", device.type == "cuda" and ops._has_triton())
    return [(name, split[name], unsplit[name]) for name in split]


def _kernels(split: Callable, unsplit: Callable, x1, x2, grad) -> None:
    split(x1, x2)
    unsplit(grad, grad)


def _copy_same_bytes(x1: torch.Tensor, x2: torch.Tensor, grad: torch.Tensor) -> None:
    # The bytes the fused op moves: forward reads two tensors and writes two, backward too.
    x1.clone(), x2.clone()
    grad.clone(), grad.clone()


def run(shape: tuple[int, int, int, int], device: torch.device, repeat: int) -> list[dict]:
    rows = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x1, x2 = (
            torch.randn(shape, device=device).contiguous(memory_format=memory_format)
            for _ in range(2)
        )
        grad = torch.randn_like(x1)
        p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()

        variants = {
            "fused": functools.partial(_fwd_bwd, ops.channel_shuffle_split, p1, p2, grad),
            **{
                f"kernel {name}": functools.partial(_kernels, split, unsplit, x1, x2, grad)
                for name, split, unsplit in _kernel_pairs(device)
            },
            "torchvision": functools.partial(
                _fwd_bwd, ops.reference_channel_shuffle_split, p1, p2, grad
            ),
            "copy": functools.partial(_copy_same_bytes, x1, x2, grad),
        }
        times = best_ms(variants, device, repeat)
        fmt = "channels_last" if memory_format == torch.channels_last else "NCHW"
        rows.append({"format": fmt, **times})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="64,58,28,28")
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    device = torch.device(args.device)
    print(
        f"channel_shuffle_split fwd+bwd, two {shape} float32 tensors, {device}, "
        f"{torch.get_num_threads()} threads, best of {args.repeat}"
    )
    rows = run(shape, device, args.repeat)
    kernels = [k for k in rows[0] if k.startswith("kernel ")]
    print(
        f"{'format':<14}{'fused ms':>10}{'torchvision ms':>16}{'copy ms':>10}"
        f"{'speed-up':>10}{'fused/copy':>12}" + "".join(f"{k + ' ms':>17}" for k in kernels)
    )
    for r in rows:
        print(
            f"{r['format']:<14}{r['fused']:>10.3f}{r['torchvision']:>16.3f}{r['copy']:>10.3f}"
            f"{r['torchvision'] / r['fused']:>9.2f}x{r['fused'] / r['copy']:>11.2f}x"
            + "".join(f"{r[k]:>17.3f}" for k in kernels)
        )


if __name__ == "__main__":
    main()
