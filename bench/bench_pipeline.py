"""Input pipeline throughput on one host core: ours vs the pytorch/examples pipeline.

Both pipelines read the same realistic JPEGs (real photographs shipped in scikit-learn and
scikit-image, re-encoded at ImageNet-like sizes, quality 90) through a DataLoader with no
worker processes and one intra-op thread, i.e. the work one data-loading worker does per
image. Rounds alternate between the pipelines and the best round of each counts, which
keeps background load from favouring either.

    python bench/bench_pipeline.py [--images 300] [--rounds 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from shufflenet_trainer.data.build import LoaderSettings, build_loaders
from shufflenet_trainer.data.decode import simplejpeg_available

# The photo fixtures live with the tests (as `helpers`), not in the runtime package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.photos import write_photo_jpegs

TARGETS = (2200, 14000)  # images/s: one fast accelerator, and an 8-NPU node


def make_dataset(root: Path, images: int, classes: int = 4) -> None:
    per = math.ceil(images / classes)
    for split, count in (("train", per), ("val", max(1, per // 4))):
        for c in range(classes):
            write_photo_jpegs(
                root / split / f"n{c:08d}", count, seed=c + (100 if split == "val" else 0)
            )


def reference_loader(root: Path, batch_size: int, train: bool) -> Iterable:
    """pytorch/examples imagenet/main.py: ImageFolder + PIL + float ToTensor/Normalize."""
    import torchvision.datasets as datasets
    import torchvision.transforms as T

    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if train:
        tf = T.Compose(
            [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
        )
    else:
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    ds = datasets.ImageFolder(str(root / ("train" if train else "val")), tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=0)


def ours_loader(root: Path, batch_size: int, train: bool, decoder: str) -> Iterable:
    device = "cuda" if decoder.startswith("gpu") else "cpu"
    loaders = build_loaders(
        LoaderSettings(
            str(root),
            batch_size=batch_size,
            workers=0,
            drop_last=False,
            decoder=decoder,
            device=device,
        )
    )
    return loaders.train if train else loaders.val


def images_per_second(loader: Iterable) -> float:
    n = 0
    start = time.perf_counter()
    for _, y in loader:
        n += len(y)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="training JPEGs (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        make_dataset(root, args.images)
        bs = args.batch_size
        # Every host decoder in the same process, so that their ratios share the conditions.
        host = (["sj-jpeg"] if simplejpeg_available() else []) + ["tv-jpeg", "pil-draft"]
        cases: dict[str, Callable[[], Iterable]] = {
            "train reference (PIL, float)": lambda: reference_loader(root, bs, True)
        }
        for dec in host:
            cases[f"train ours {dec} (uint8)"] = lambda d=dec: ours_loader(root, bs, True, d)
        cases["val reference (PIL, float)"] = lambda: reference_loader(root, bs, False)
        val_host = [d for d in host if d != "pil-draft"]  # it validates as tv-jpeg does
        for dec in val_host:
            cases[f"val ours {dec} (uint8)"] = lambda d=dec: ours_loader(root, bs, False, d)
        if torch.cuda.is_available():
            cases["train ours gpu-nvjpeg (uint8)"] = lambda: ours_loader(
                root, bs, True, "gpu-nvjpeg"
            )
        loaders = {name: make() for name, make in cases.items()}
        for loader in loaders.values():  # warm-up: imports, file cache
            images_per_second(loader)
        best = dict.fromkeys(loaders, 0.0)
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                best[name] = max(best[name], images_per_second(loader))

    default = host[0]  # what decoder="auto" picks on a host without a GPU
    ref, ours = best["train reference (PIL, float)"], best[f"train ours {default} (uint8)"]
    val_ref = best["val reference (PIL, float)"]
    print(f"host: {os.cpu_count()} cores visible; 1 thread, 0 workers; torch {torch.__version__}")
    print(f"{args.images} training JPEGs ~500x375 q90; batch {bs}; best of {args.rounds} rounds")
    print(f"{'pipeline':34s} {'images/s':>9s} {'ms/image':>9s}")
    for name, rate in best.items():
        print(f"{name:34s} {rate:9.1f} {1000.0 / rate:9.3f}")
    for dec in host:
        ratio = best[f"train ours {dec} (uint8)"] / ref
        target = " (target >= 2.5x)" if dec == default else ""
        print(f"train speed-up ours {dec}/reference: {ratio:.2f}x{target}")
    for dec in val_host:
        print(
            f"val speed-up ours {dec}/reference: {best[f'val ours {dec} (uint8)'] / val_ref:.2f}x"
        )
    for target in TARGETS:
        print(
            f"host cores to feed {target} images/s: ours ({default}) {math.ceil(target / ours)}, "
            f"reference {math.ceil(target / ref)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
