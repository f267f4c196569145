"""Write scikit-learn's handwritten digits as an ImageFolder dataset (real data, offline).

``python -m shufflenet_trainer.data.prep.demo_data OUT_DIR [--size 64] [--val-fraction 0.2]``

1797 real 8x8 scans of 10 digits, upscaled to ``--size`` pixels, RGB PNG, split per class
with a fixed seed. A marker file records the parameters: a second call with the same ones
does nothing; the tree is written to a temporary folder and renamed into place, so a
half-written dataset is never mistaken for a complete one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError, DataError, TrainerError

MARKER = ".shufflenet-demo-data.json"
FORMAT_VERSION = 1
SPLIT_SEED = 0


def _params(size: int, val_fraction: float, count: int) -> dict[str, object]:
    return {
        "source": "sklearn.datasets.load_digits",
        "format_version": FORMAT_VERSION,
        "size": size,
        "val_fraction": val_fraction,
        "seed": SPLIT_SEED,
        "images": count,
    }


def _read_marker(out: Path) -> dict[str, object] | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def split_indices(labels: np.ndarray, val_fraction: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Boolean mask of validation samples: ``round(val_fraction * n_c)`` per class ``c``."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_val[idx[: round(val_fraction * len(idx))]] = True
    return is_val


def write_digits_imagefolder(
    out_dir: str | os.PathLike[str], size: int = 64, val_fraction: float = 0.2
) -> Path:
    """Write (or keep, if already complete with these parameters) the digits ImageFolder."""
    if size < 8:
        raise ConfigError(f"--size {size} is below the 8 pixels of the digits: use 8 or more")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction} is outside (0, 1): use e.g. 0.2")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images: np.ndarray = digits.images  # (n, 8, 8), values 0..16
    labels: np.ndarray = digits.target
    out = Path(out_dir)
    want = _params(size, val_fraction, len(labels))
    if _read_marker(out) == want:
        return out
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder: choose another output directory")
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise DataError(
            f"{out} is not empty and holds no demo dataset: choose another output "
            "directory or empty it"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    try:
        is_val = split_indices(labels, val_fraction)
        pixels = np.clip(images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        for split in ("train", "val"):
            for c in range(10):
                (tmp / split / str(c)).mkdir(parents=True)
        for i, (img, label, val) in enumerate(zip(pixels, labels, is_val, strict=True)):
            gray = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
            split = "val" if val else "train"
            gray.convert("RGB").save(tmp / split / str(int(label)) / f"{i:04d}.png")
        (tmp / MARKER).write_text(json.dumps(want, indent=1) + "\n")
        _replace(tmp, out, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace(tmp: Path, out: Path, want: dict[str, object]) -> None:
    old = None
    if out.exists():
        # An empty folder or an older demo dataset: move it aside, then swap in the new one.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "d")
    try:
        os.replace(tmp, out)
    except OSError:
        # Another process finished first; accept its result if it is the same dataset.
        if _read_marker(out) != want:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m shufflenet_trainer.data.prep.demo_data",
        description="Write scikit-learn's handwritten digits as an ImageFolder dataset.",
    )
    ap.add_argument("out_dir", help="output folder (gets train/ and val/)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument(
        "--val-fraction", type=float, default=0.2, help="share per class for val (default 0.2)"
    )
    args = ap.parse_args(argv)
    try:
        out = write_digits_imagefolder(args.out_dir, args.size, args.val_fraction)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    n_train = sum(1 for _ in (out / "train").rglob("*.png"))
    n_val = sum(1 for _ in (out / "val").rglob("*.png"))
    print(f"digits dataset in {out}: {n_train} train, {n_val} val images, 10 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
