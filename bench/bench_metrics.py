"""Cost of the Prometheus exporter per training step, against a measured training step.

Run: python bench/bench_metrics.py [--device cpu|cuda] [--arch shufflenet_v2_x1_0]
         [--batch 32] [--image-size 224] [--train-steps 5] [--calls 200000] [--rounds 5]
         [--print-freq 10] [--json FILE]

What the engine does per step with the exporter attached: `on_step` (a counter, two histogram
observations, two gauges), plus `on_log` once per print step (-p, default 10). Both are timed
in a tight loop with the same arguments the engine passes, against the same loop calling
nothing, over several rounds (best round counts: the hooks' own cost, without the machine's
noise). A scrape renders the whole registry on the HTTP thread and holds the GIL meanwhile:
its cost is reported as a share of a 15 s scrape interval. The training step is a full SGD
step (forward, loss, backward, optimizer) of our model on one synthetic batch, so the result
is the overhead as a share of a real step on this machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_train_step import images_per_second, make_step
from prometheus_client import generate_latest

from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.model import shufflenetv2 as models
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.loop import Hooks, StepEvent

SCRAPE_INTERVAL = 15.0  # seconds; kube-prometheus-stack's default is 30 s, the chart's 15 s


def _best_per_call(fn, calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(calls)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def hook_cost(calls: int, rounds: int, print_freq: int) -> dict[str, float]:
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=8, rank=3)
    exporter = MetricsExporter(cfg, {"JOB_NAME": "bench"})
    exporter.attach(Hooks())
    exporter.on_start(
        {"folder": None, "device": "cpu", "epochs": 240, "start_epoch": 0, "steps_per_epoch": 1251}
    )
    events = [StepEvent(0, i % 1251, i, 1024, 0.12, 0.003, 0.5) for i in range(1000)]
    record = {"loss": 6.5, "fps_all": 14000.0}
    on_step, on_log = exporter.on_step, exporter.on_log

    def with_hooks(n: int) -> None:
        for i in range(n):
            on_step(events[i % 1000])
            if i % print_freq == 0:
                on_log(record)

    def without(n: int) -> None:
        for i in range(n):
            _ = events[i % 1000]  # the same loop body minus the calls
            if i % print_freq == 0:
                pass

    hooked = _best_per_call(with_hooks, calls, rounds)
    bare = _best_per_call(without, calls, rounds)
    scrape = _best_per_call(
        lambda n: [generate_latest(exporter.registry) for _ in range(n)], 200, rounds
    )
    return {"hook_seconds": max(hooked - bare, 0.0), "scrape_seconds": scrape}


def train_step_seconds(args: argparse.Namespace, device: torch.device) -> float:
    model = models.build_model(args.arch).to(device).train()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    step = make_step(model, device, "off", images, labels)
    for _ in range(2):
        step()
    return args.batch / images_per_second(step, device, args.train_steps, args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="shufflenet_v2_x1_0", choices=models.ARCHS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--print-freq", type=int, default=10)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)

    cost = hook_cost(args.calls, args.rounds, args.print_freq)
    step = train_step_seconds(args, device)
    hook, scrape = cost["hook_seconds"], cost["scrape_seconds"]
    rows = {
        "hook_us_per_step": hook * 1e6,
        "scrape_ms": scrape * 1e3,
        "train_step_ms": step * 1e3,
        "hook_share_of_step_pct": 100 * hook / step,
        "scrape_share_at_15s_pct": 100 * scrape / SCRAPE_INTERVAL,
        # The step time below which the hooks would cost 1%: how fast a device may get.
        "step_ms_at_1pct": hook * 100 * 1e3,
    }
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"metrics exporter, {where} ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}; step: {args.arch}, batch {args.batch}, {args.image_size}px"
    )
    print(
        f"  hooks per step (on_step, on_log every {args.print_freq}): "
        f"{rows['hook_us_per_step']:.2f} us"
    )
    print(f"  scrape (render the registry):            {rows['scrape_ms']:.3f} ms")
    print(f"  training step:                           {rows['train_step_ms']:.1f} ms")
    print(f"  overhead per step:                       {rows['hook_share_of_step_pct']:.5f} %")
    print(f"  scrapes at 15 s, share of wall time:     {rows['scrape_share_at_15s_pct']:.5f} %")
    print(f"  steps faster than {rows['step_ms_at_1pct']:.3f} ms would pay 1%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"device": where, **vars(args)}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
