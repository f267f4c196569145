"""Crop geometry of the ImageNet transforms, as pure functions of the image size.

Training: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip.
Validation: Resize(shorter side -> val_resize) + CenterCrop(size).

The geometry is computed on the source image size, so a decoder may produce a reduced image
(JPEG DCT scaling) and map the same box into it. The randomness of a sample depends only on
(seed, epoch, index): batches are the same whatever the worker count or scheduling, which is
what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class Crop(NamedTuple):
    """A crop box in source pixels (integers, like torchvision's get_params)."""

    top: int
    left: int
    height: int
    width: int


class TrainParams(NamedTuple):
    crop: Crop
    flip: bool


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """An independent generator per sample; string seeds are hashed (SHA-512) by ``random``."""
    return random.Random(f"{seed}:{epoch}:{index}")


def random_resized_crop(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Crop:
    """A crop of random area fraction (uniform in ``scale``) and log-uniform aspect ratio.

    Ten tries to fit inside the image, then a centred crop clamped to ``ratio``: the same
    distribution as torchvision's RandomResizedCrop.get_params.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return Crop(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return Crop((height - h) // 2, (width - w) // 2, h, w)


def train_params(width: int, height: int, seed: int, epoch: int, index: int) -> TrainParams:
    rng = sample_rng(seed, epoch, index)
    crop = random_resized_crop(width, height, rng)
    return TrainParams(crop, rng.random() < 0.5)


def resize_shorter(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) of torchvision's Resize(size) (an int: the shorter side)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_offsets(width: int, height: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(crop) on an image at least ``crop`` large."""
    return round((height - crop) / 2.0), round((width - crop) / 2.0)


def val_source_box(
    width: int, height: int, resize: int, crop: int
) -> tuple[float, float, float, float]:
    """The (left, top, right, bottom) box in source pixels that Resize+CenterCrop keeps.

    Resampling only this box to ``crop`` x ``crop`` gives the pixels of resizing the whole
    image and then cropping, without computing the discarded margin.
    """
    new_w, new_h = resize_shorter(width, height, resize)
    top, left = center_crop_offsets(new_w, new_h, crop)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


def draft_scale(crop_w: float, crop_h: float, out_w: int, out_h: int) -> int:
    """Largest JPEG DCT reduction (1, 2, 4 or 8) that keeps the crop at least the output size.

    Resampling then still only shrinks, so the result stays close to a full decode.
    """
    for s in (8, 4, 2):
        if crop_w / s >= out_w and crop_h / s >= out_h:
            return s
    return 1
