"""The CLI against the step benchmark: `shufflenet-train`'s FPS@all over its training-step
images/s, with synthetic data (--dummy, made on the device) and with real JPEGs.

Run: python bench/gpu/cli_vs_step.py --step-json train_bf16.json [--data dummy|jpeg]
         [--device cuda] [--arch shufflenet_v2_x1_0] [--batch 256] [--amp bf16]
         [--image-size 224] [--workers 8] [--steps 40] [--out DIR] [--json FILE]

The step figure is `ours` in the channels_last row of a bench/bench_train_step.py JSON made
with the same arch, batch, amp and image size. The CLI runs once, as a user would, as its
own process, with --channels-last; FPS@all and the data-wait share come from its
train.jsonl. ``--data jpeg`` first writes an ImageFolder of photographs re-encoded at
ImageNet sizes (bench_decode.realistic_jpegs; a few hundred distinct files, linked under
many names) and trains on it with the default decoder (nvJPEG on CUDA). Exits non-zero when
the run fails or a figure is missing; the ratio is reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WARMUP_STEPS = 10  # FPS@all leaves out the first 10 steps (train/meters.py)


def jpeg_folder(root: Path, images: int, classes: int = 10, distinct: int = 512) -> Path:
    """train/ and val/ with ``images`` training JPEGs (``distinct`` unique files, hard-linked)."""
    from bench_decode import realistic_jpegs

    blobs = realistic_jpegs(min(distinct, images))
    for split, count in (("train", images), ("val", max(classes, images // 50))):
        for i in range(count):
            folder = root / split / f"class{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            first = root / "blobs" / f"{i % len(blobs)}.jpg"
            if not first.exists():
                first.parent.mkdir(exist_ok=True)
                first.write_bytes(blobs[i % len(blobs)])
            os.link(first, folder / f"{i:06d}.jpg")
    return root


def run_cli(args: argparse.Namespace, data: Path | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "shufflenet_trainer.cli"]
    cmd += ["--dummy", "--num-classes", "1000"] if data is None else [str(data)]
    cmd += ["--device", args.device, "--amp", args.amp, "--channels-last", "-a", args.arch]
    cmd += ["-b", str(args.batch), "--image-size", str(args.image_size), "--epochs", "1"]
    cmd += ["--max-steps-per-epoch", str(args.steps), "-j", str(args.workers)]
    cmd += ["--val-resize", str(max(args.image_size, 256 * args.image_size // 224))]
    cmd += ["--output-dir", str(out)]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-2000:])
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        raise SystemExit(f"FAIL: the CLI exited {proc.returncode}")
    (jsonl,) = out.rglob("train.jsonl")
    epochs = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["kind"] == "epoch"]
    if not epochs:
        raise SystemExit("FAIL: no epoch record in train.jsonl")
    record = epochs[-1]
    return {
        "fps_all": record["images_per_sec"],
        "data_wait_share": record["data_wait_share"],
        "wall_seconds": time.perf_counter() - start,
    }


def step_images_per_s(path: str) -> float:
    rows = json.loads(Path(path).read_text())["rows"]
    for row in rows:
        if row["variant"] == "channels_last" and "ours_images_per_s" in row:
            return float(row["ours_images_per_s"])
    raise SystemExit(f"FAIL: no channels_last row with 'ours' in {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-json", required=True)
    parser.add_argument("--data", choices=("dummy", "jpeg"), default="dummy")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="shufflenet_v2_x1_0")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=None, help="result folders (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps FPS@all leaves out")
    step = step_images_per_s(args.step_json)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / f"cli-{args.data}"
        data = None
        if args.data == "jpeg":
            data = jpeg_folder(Path(tmp) / "jpegs", args.batch * args.steps)
        cli = run_cli(args, data, out)
    ratio = cli["fps_all"] / step
    print(
        f"CLI {args.data}: FPS@all {cli['fps_all']:.1f}, "
        f"data-wait {100 * cli['data_wait_share']:.1f}%; "
        f"step benchmark {step:.1f} img/s; CLI / step {ratio:.2f}x"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "step_images_per_s": step, "ratio": ratio, **cli}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
