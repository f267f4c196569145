"""Real photographs shipped in Python packages, re-encoded at ImageNet-like sizes.

Used by the decode tests and the pipeline benchmark so both run on real image content
(natural-image entropy decides JPEG decode cost) without downloading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# Typical ImageNet shapes (width, height): most images are about 500 pixels on the long side.
IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 500), (640, 480))


def package_photos() -> list[np.ndarray]:
    """RGB uint8 photographs from scikit-learn and (when installed) scikit-image."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    try:
        import skimage.data as sd
    except ImportError:
        return photos
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
    ):
        try:
            im = getattr(sd, name)()
        except Exception:  # a data file that needs a download: not shipped, skip it
            continue
        if im.ndim == 3 and im.shape[2] == 3:
            photos.append(np.ascontiguousarray(im, dtype=np.uint8))
    return photos


def imagenet_like(
    photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """A random crop of ``photo`` with the aspect of ``size``, resized to ``size``."""
    h, w = photo.shape[:2]
    aspect = size[0] / size[1]
    cw = min(w, int(h * aspect))
    ch = min(h, int(cw / aspect))
    frac = rng.uniform(0.7, 1.0)
    cw, ch = max(1, int(cw * frac)), max(1, int(ch * frac))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    im = Image.fromarray(photo[top : top + ch, left : left + cw])
    return im.resize(size, Image.Resampling.BICUBIC)


def write_photo_jpegs(
    out_dir: str | os.PathLike[str],
    count: int,
    *,
    quality: int = 90,
    sizes: tuple[tuple[int, int], ...] = IMAGENET_LIKE_SIZES,
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` JPEGs cut from the package photos; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = package_photos()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        im = imagenet_like(photos[i % len(photos)], sizes[i % len(sizes)], rng)
        path = out / f"photo_{i:05d}.jpg"
        im.save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths
