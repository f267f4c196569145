"""The kernel-choice table: which channel-shuffle kernel ``--shuffle-kernel measure`` picks for
each op at the shapes of a ShuffleNetV2 training step, with every candidate's time.

Run: python bench/gpu/kernel_table.py [--device cuda] [--arch shufflenet_v2_x1_0]
         [--batch 256] [--image-size 224] [--json FILE]

The shapes are the ones the model's joins see (stage 2, 3 and 4: split on two half-width
tensors, cat at the stage end, and their backward ops), in bf16 and fp32, NCHW and
channels_last. Times are kernel_choice's own first-call measurement (best of its repeats,
device-synchronised), so they are what the trainer would decide on this device.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from shufflenet_trainer.model import kernel_choice, ops
from shufflenet_trainer.model import shufflenetv2 as models

STAGE_OUT = {
    "shufflenet_v2_x0_5": (48, 96, 192),
    "shufflenet_v2_x1_0": (116, 232, 464),
    "shufflenet_v2_x1_5": (176, 352, 704),
    "shufflenet_v2_x2_0": (244, 488, 976),
}


def join_shapes(arch: str, batch: int, image_size: int) -> list[tuple[int, int, int, int]]:
    """(N, C, H, W) of each half a stage's joins take: C = stage channels / 2."""
    side = image_size // 4  # conv1 (stride 2) and the max pool (stride 2)
    shapes = []
    for channels in STAGE_OUT[arch]:
        side = (side + 1) // 2  # each stage starts with a stride-2 block
        shapes.append((batch, channels // 2, side, side))
    return shapes


def measure(device: torch.device, shapes: list[tuple[int, int, int, int]]) -> int:
    """Runs the four ops at every shape; returns how many distinct keys that makes (a tensor
    contiguous in both formats, 1x1 maps, is one key)."""
    keys = set()
    for dtype in (torch.bfloat16, torch.float32):
        for fmt in (torch.contiguous_format, torch.channels_last):
            for shape in shapes:
                x1, x2 = (
                    torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                    for _ in range(2)
                )
                a, b = ops.channel_shuffle_split_op(x1, x2)
                ops.channel_unshuffle_split_op(a, b)
                cat = ops.channel_shuffle_cat_op(x1, x2)
                ops.channel_unshuffle_cat_op(cat)
                keys.add((dtype, kernel_choice.memory_format_tag(x1), shape))
    return 4 * len(keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="shufflenet_v2_x1_0", choices=models.ARCHS)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", help="also write the table to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    kernel_choice.set_policy("measure")
    shapes = join_shapes(args.arch, args.batch, args.image_size)
    expected = measure(device, shapes)
    lines = kernel_choice.report()
    print(f"kernel choice ({kernel_choice.summary()}), {args.arch} batch {args.batch}, {device}")
    for line in lines:
        print(f"  {line}")
    if device.type == "cuda":
        untimed = [line for line in lines if "triton" not in line.split("(", 1)[-1]]
        if untimed:
            print(f"FAIL: the Triton kernel was not measured for {len(untimed)} keys")
            return 1
    if len(lines) != expected:
        print(f"FAIL: {len(lines)} choices made, {expected} expected")
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "choices": lines}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
