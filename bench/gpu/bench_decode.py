"""JPEG decode throughput: batched GPU decode (nvJPEG via torchvision) against CPU decoders.

Realistic inputs: the photographs scikit-learn ships, resized to ImageNet-like sizes
(about 500x375) with varied crops and re-encoded as JPEG quality 90.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import decode_jpeg


def realistic_jpegs(count: int) -> list[bytes]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (500, 375) if i % 3 else (375, 500)
        img = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--require-cuda", action="store_true", help="fail (exit 1) when no CUDA device is seen"
    )
    args = parser.parse_args()
    if args.require_cuda and not torch.cuda.is_available():
        raise SystemExit("bench_decode: --require-cuda and no CUDA device: nothing to measure")
    files = realistic_jpegs(args.count)
    datas = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    mean_kb = sum(map(len, files)) / len(files) / 1024
    print(f"{len(files)} JPEGs, mean {mean_kb:.0f} KiB, torchvision {torchvision.__version__}")

    rows = []
    # CPU: torchvision's libjpeg-turbo decoder and PIL, one thread.
    torch.set_num_threads(1)
    start = time.perf_counter()
    for d in datas:
        decode_jpeg(d)
    elapsed = time.perf_counter() - start
    rows.append(("cpu torchvision decode_jpeg, 1 thread", len(datas) / elapsed))
    start = time.perf_counter()
    for f in files:
        Image.open(io.BytesIO(f)).convert("RGB").load()
    rows.append(("cpu PIL decode, 1 thread", len(files) / (time.perf_counter() - start)))

    if torch.cuda.is_available():
        for _ in range(2):  # warm-up: nvJPEG handles, allocator
            decode_jpeg(datas[: args.batch], device="cuda")
        torch.cuda.synchronize()
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            for i in range(0, len(datas), args.batch):
                decode_jpeg(datas[i : i + args.batch], device="cuda")
            torch.cuda.synchronize()
            best = max(best, len(datas) / (time.perf_counter() - start))
        name = f"gpu decode_jpeg batched ({args.batch}), {torch.cuda.get_device_name()}"
        rows.append((name, best))
    for name, ips in rows:
        print(f"{name:<60}{ips:>10.0f} images/s")


if __name__ == "__main__":
    main()
