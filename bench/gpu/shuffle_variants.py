"""Experiment: ways to write the fused split-shuffle's interleave on CUDA, timed side by side.

The shipped generic kernel (two strided copies into a pair-split view) is one candidate; the
others are torchvision's formulation, the NPU kernel's cat + index_select, and a Triton
gather that reads each output's source element directly. Each variant is checked against
the reference on fresh random inputs before it is timed (CUDA events, median). Not used by
the product: it tells which kernel is worth adopting for CUDA.
"""

from __future__ import annotations

import statistics
import sys

import torch

from shufflenet_trainer.model import ops, ops_npu

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


if triton is not None:

    @triton.jit
    def _interleave_kernel(
        x1_ptr,
        x2_ptr,
        out_ptr,
        total,
        channels,  # C of the output (= C of each input)
        spatial,  # H * W
        in_offset,  # first input channel this output draws from (0 or C/2)
        CHANNELS_LAST: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < total
        if CHANNELS_LAST:
            c = idx % channels
            rest = idx // channels  # n * spatial + s
            src_c = c // 2 + in_offset
            src = rest * channels + src_c
        else:
            s = idx % spatial
            nc = idx // spatial
            c = nc % channels
            n = nc // channels
            src_c = c // 2 + in_offset
            src = (n * channels + src_c) * spatial + s
        even = (c % 2) == 0
        v1 = tl.load(x1_ptr + src, mask=mask & even)
        v2 = tl.load(x2_ptr + src, mask=mask & (~even))
        tl.store(out_ptr + idx, tl.where(even, v1, v2), mask=mask)

    def triton_split(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels_last = not x1.is_contiguous()
        _, c, h, w = x1.shape
        outs = []
        for offset in (0, c // 2):
            out = torch.empty_like(x1)
            total = out.numel()
            grid = (triton.cdiv(total, 1024),)
            _interleave_kernel[grid](
                x1, x2, out, total, c, h * w, offset, CHANNELS_LAST=channels_last, BLOCK=1024
            )
            outs.append(out)
        return outs[0], outs[1]


def cuda_ms(fn, repeat: int = 100) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    variants = {
        "shipped (strided copies)": ops.channel_shuffle_split,
        "torchvision": ops.reference_channel_shuffle_split,
        "cat+index_select (npu)": ops_npu.index_shuffle_split,
    }
    if triton is not None:
        variants["triton gather"] = triton_split
    bad = 0
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            shape = (256, 116, 28, 28)
            x1, x2 = (
                torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
                for _ in range(2)
            )
            ref = ops.reference_channel_shuffle_split(x1, x2)
            nbytes = 4 * x1.numel() * x1.element_size()  # read two inputs, write two outputs
            copy_ms = cuda_ms(lambda x1=x1, x2=x2: (x1.clone(), x2.clone()))
            tag = "channels_last" if fmt == torch.channels_last else "NCHW"
            print(
                f"{dtype} {tag} {shape}: copy of the same bytes {copy_ms:.3f} ms "
                f"({nbytes / copy_ms / 1e6:.0f} GB/s)"
            )
            for name, fn in variants.items():
                y1, y2 = (t.clone() for t in (x1, x2))
                a, b = fn(y1, y2)
                ok = torch.equal(a, ref[0]) and torch.equal(b, ref[1])
                bad += not ok
                ms = cuda_ms(lambda fn=fn, x1=x1, x2=x2: fn(x1, x2))
                print(
                    f"  {name:<24}{ms:>8.3f} ms  {ms / copy_ms:>5.2f}x copy  "
                    f"{'ok' if ok else 'WRONG'}"
                )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
