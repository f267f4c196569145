"""Training-step throughput: our ShuffleNetV2 (fused shuffle) against torchvision's, same process.

Run: python bench/bench_train_step.py [--device cpu|cuda] [--arch shufflenet_v2_x1_0]
         [--batch 32] [--image-size 224] [--steps 5] [--rounds 3]
         [--variants eager,channels_last,compile] [--amp off|bf16|fp16] [--json FILE]

Each variant builds both models with the same weights and times full SGD steps (forward,
loss, backward, optimizer step) on the same synthetic batch, alternating the two models over
several rounds so that drift in the machine's speed hits both alike. Reported: images/s of
each (median over rounds) and the ratio ours / torchvision. Ratios are the result; absolute
numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from shufflenet_trainer.model import kernel_choice
from shufflenet_trainer.model import shufflenetv2 as models
from shufflenet_trainer.train.device import synchronize

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Our models by --models name: the shuffle op each uses.
OUR_SHUFFLE = {"ours": "fused", "ours-reference": "reference"}


def make_step(
    model: nn.Module, device: torch.device, amp: str, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def images_per_second(
    step: Callable[[], None], device: torch.device, steps: int, batch: int
) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def bench_variant(args: argparse.Namespace, variant: str, device: torch.device) -> dict:
    channels_last = variant in ("channels_last", "compile")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    names = args.models.split(",")
    # Every model starts from the same weights: torchvision's initialisation.
    reference = getattr(torchvision.models, args.arch)(weights=None).to(device)
    candidates: dict[str, nn.Module] = {}
    for name in names:
        if name == "torchvision":
            candidates[name] = reference
        else:
            candidates[name] = models.build_model(args.arch, shuffle=OUR_SHUFFLE[name]).to(device)
            candidates[name].load_state_dict(reference.state_dict())
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)

    steps = {}
    for name in names:
        model = candidates[name]
        model = model.to(memory_format=memory_format).train()
        if variant == "compile":
            model = torch.compile(model)
        steps[name] = make_step(model, device, args.amp, images, labels)
        warmup_start = time.perf_counter()
        for _ in range(args.warmup):
            steps[name]()
        synchronize(device)
        if variant == "compile":
            print(
                f"  {variant}/{name}: warm-up incl. compilation "
                f"{time.perf_counter() - warmup_start:.1f} s",
                flush=True,
            )

    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name in rates:
            rates[name].append(images_per_second(steps[name], device, args.steps, args.batch))
    row = {"variant": variant}
    row.update({f"{name}_images_per_s": statistics.median(r) for name, r in rates.items()})
    if "ours" in rates and "torchvision" in rates:
        row["ratio"] = row["ours_images_per_s"] / row["torchvision_images_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="shufflenet_v2_x1_0", choices=models.ARCHS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="eager,channels_last,compile")
    parser.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES))
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--models",
        default="ours,torchvision",
        help="comma list of ours, torchvision, ours-reference (our blocks, torchvision's shuffle)",
    )
    parser.add_argument(
        "--shuffle-kernel",
        default="auto",
        choices=kernel_choice.POLICIES,
        help="kernel policy of the fused shuffle ops (model/kernel_choice.py)",
    )
    args = parser.parse_args()
    kernel_choice.set_policy(args.shuffle_kernel)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    print(
        f"training step, {args.arch}, batch {args.batch}, {args.image_size}px, amp {args.amp}, "
        f"{name}, torch {torch.__version__}",
        flush=True,
    )
    rows = [bench_variant(args, v, device) for v in args.variants.split(",")]
    names = args.models.split(",")
    with_ratio = "ours" in names and "torchvision" in names
    header = f"{'variant':<15}" + "".join(f"{n + ' img/s':>22}" for n in names)
    print(header + (f"{'ratio':>8}" if with_ratio else ""))
    for r in rows:
        cells = "".join(f"{r[n + '_images_per_s']:>22.1f}" for n in names)
        print(f"{r['variant']:<15}{cells}" + (f"{r['ratio']:>7.2f}x" if with_ratio else ""))
    choices = kernel_choice.report()
    counts = collections.Counter(line.split(": ")[1].split(" ")[0] for line in choices)
    print(
        f"shuffle kernels ({args.shuffle_kernel}): "
        + (", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none chosen")
    )
    if args.json:
        meta = {"device": name, "torch": torch.__version__, **vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "shuffle_kernels": choices}, f, indent=2)


if __name__ == "__main__":
    main()
