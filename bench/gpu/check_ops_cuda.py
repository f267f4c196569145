"""CUDA correctness of the channel-shuffle ops against torchvision's formulation.

Every kernel (``--shuffle-kernel`` copy, stack, gather, triton: model/kernel_choice.py) is
forced in turn. Fresh random inputs for every case; the CUDA caching allocator is first
filled with NaN and released, so an output element the op failed to write shows up as NaN
instead of passing by luck. Exits non-zero on any mismatch, or when a kernel that should be
there (Triton on CUDA) cannot run.

Run: python bench/gpu/check_ops_cuda.py [--device cuda] [--quick]
``--device cpu --quick`` is the smoke test of this script (tests/unit/test_bench_gpu.py):
small shapes, no compile, kernels the CPU has.
"""

from __future__ import annotations

import argparse
import sys

import torch

from shufflenet_trainer.model import kernel_choice, ops
from shufflenet_trainer.model import shufflenetv2 as models


def poison_allocator(device: torch.device) -> None:
    if device.type != "cuda":
        return
    blocks = [torch.full((64, 1 << 20), float("nan"), device=device) for _ in range(8)]
    del blocks  # freed into the cache, reused by the next allocations


def check(name: str, ok: bool, failures: list[str]) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes, no compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    failures: list[str] = []
    shapes = [(2, 6, 3, 4), (64, 58, 28, 28), (32, 116, 14, 14), (7, 232, 7, 7)]
    if args.quick:
        shapes = [(2, 6, 3, 4), (1, 2, 5, 3)]
    # On the CPU the Triton kernels run only under the interpreter (the unit tests).
    kernels = [k for k in kernel_choice.KERNELS if device.type == "cuda" or k != "triton"]
    for kernel in kernels:
        kernel_choice.set_policy(kernel)
        check_kernel(kernel, device, shapes, failures)
    kernel_choice.reset()
    if not args.quick:
        check_compile_and_model(device, failures)
    print(f"{len(failures)} failed" if failures else f"all {device.type} op checks passed")
    return 1 if failures else 0


def check_kernel(
    kernel: str, device: torch.device, shapes: list[tuple[int, ...]], failures: list[str]
) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            for shape in shapes:
                poison_allocator(device)
                x1 = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                x2 = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                p1, p2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
                q1, q2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
                a, b = ops.channel_shuffle_split(p1, p2)
                ra, rb = ops.reference_channel_shuffle_split(q1, q2)
                ga, gb = torch.randn_like(ra), torch.randn_like(rb)
                torch.autograd.backward((a, b), (ga, gb))
                torch.autograd.backward((ra, rb), (ga, gb))
                cat = ops.channel_shuffle_cat(x1, x2)
                shuffled = ops.reference_channel_shuffle(x1, 2)
                same = (
                    torch.equal(a, ra)
                    and torch.equal(b, rb)
                    and torch.equal(p1.grad, q1.grad)
                    and torch.equal(p2.grad, q2.grad)
                    and torch.equal(cat, ops.reference_channel_shuffle_cat(x1, x2))
                    and torch.equal(ops.channel_shuffle(x1, 2), shuffled)
                    and a.is_contiguous(memory_format=fmt)
                    and not torch.isnan(a).any().item()
                )
                tag = "channels_last" if fmt == torch.channels_last else "NCHW"
                check(f"{kernel}: split/cat/shuffle fwd+bwd {dtype} {tag} {shape}", same, failures)


def check_compile_and_model(device: torch.device, failures: list[str]) -> None:
    # torch.compile (inductor, CUDA) of the ops and of the whole model.
    def join(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        a, b = ops.channel_shuffle_split(x1, x2)
        return ops.channel_shuffle_cat(a.relu(), b * 2)

    x1, x2 = (torch.randn(8, 58, 28, 28, device=device) for _ in range(2))
    compiled = torch.compile(join, fullgraph=True)
    check("compiled ops equal eager", torch.equal(compiled(x1, x2), join(x1, x2)), failures)

    import torchvision

    reference = torchvision.models.shufflenet_v2_x1_0(weights=None).to(device)
    ours = models.build_model("shufflenet_v2_x1_0").to(device)
    ours.load_state_dict(reference.state_dict())
    for fmt in (torch.contiguous_format, torch.channels_last):
        reference = reference.to(memory_format=fmt)
        ours = ours.to(memory_format=fmt)
        x = torch.randn(16, 3, 224, 224, device=device).contiguous(memory_format=fmt)
        out_ref, out = reference(x), ours(x)
        g = torch.randn_like(out)
        out_ref.backward(g)
        out.backward(g)
        rel = ((out - out_ref).norm() / out_ref.norm()).item()
        grad_rel = max(
            ((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-12)).item()
            for p, q in zip(ours.parameters(), reference.parameters(), strict=True)
        )
        tag = "channels_last" if fmt == torch.channels_last else "NCHW"
        # cuDNN may pick different algorithms for the two graphs: allow float32 rounding.
        check(
            f"model vs torchvision {tag}: output rel {rel:.1e}, max grad rel {grad_rel:.1e}",
            rel < 1e-4 and grad_rel < 1e-3,
            failures,
        )
        reference.zero_grad()
        ours.zero_grad()
    compiled_model = torch.compile(ours.eval(), fullgraph=True)
    x = torch.randn(16, 3, 224, 224, device=device)
    with torch.no_grad():
        rel = ((compiled_model(x) - ours(x)).norm() / ours(x).norm()).item()
    check(f"compiled model (fullgraph) vs eager: rel {rel:.1e}", rel < 1e-3, failures)


if __name__ == "__main__":
    sys.exit(main())
