"""Crop geometry: same distribution as torchvision's RandomResizedCrop, exact val geometry."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from shufflenet_trainer.data.decode import jpeg_size
from shufflenet_trainer.data.transforms import (
    Crop,
    center_crop_offsets,
    draft_scale,
    random_resized_crop,
    resize_shorter,
    sample_rng,
    train_params,
    val_source_box,
)

N = 4000


def _stats(crops, width: int, height: int) -> tuple[list[float], list[float]]:
    area = [c.height * c.width / (width * height) for c in crops]
    log_aspect = [math.log(c.width / c.height) for c in crops]
    return area, log_aspect


def _torchvision(width: int, height: int, scale=(0.08, 1.0)):
    torch.manual_seed(1234)
    img = torch.empty(3, height, width)
    return [Crop(*RandomResizedCrop.get_params(img, scale, (3 / 4, 4 / 3))) for _ in range(N)]


def _ours(width: int, height: int, scale=(0.08, 1.0)):
    return [random_resized_crop(width, height, sample_rng(0, 0, i), scale) for i in range(N)]


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1000, 200)])
def test_same_distribution_as_torchvision(size: tuple[int, int]) -> None:
    w, h = size
    ref_area, ref_aspect = _stats(_torchvision(w, h), w, h)
    our_area, our_aspect = _stats(_ours(w, h), w, h)
    # Seeded draws: a fixed outcome, p far above the threshold when the laws agree.
    assert ks_2samp(ref_area, our_area).pvalue > 1e-3
    assert ks_2samp(ref_aspect, our_aspect).pvalue > 1e-3


def test_detects_a_different_distribution() -> None:
    w, h = 500, 375
    ref_area, ref_aspect = _stats(_torchvision(w, h), w, h)
    other_area, _ = _stats(_ours(w, h, scale=(0.5, 1.0)), w, h)
    assert ks_2samp(ref_area, other_area).pvalue < 1e-6
    # A square-only crop keeps areas but changes aspects.
    sq = [random_resized_crop(w, h, random.Random(i), ratio=(1.0, 1.0)) for i in range(N)]
    assert ks_2samp(ref_aspect, _stats(sq, w, h)[1]).pvalue < 1e-6


def test_crops_fit_and_depend_only_on_seed_epoch_index() -> None:
    for i in range(500):
        p = train_params(37 + i, 23 + 2 * i, 5, 2, i)
        c = p.crop
        assert c.top >= 0 and c.top + c.height <= 23 + 2 * i
        assert c.left >= 0 and c.left + c.width <= 37 + i
    assert train_params(500, 375, 1, 2, 3) == train_params(500, 375, 1, 2, 3)
    assert train_params(500, 375, 1, 2, 3) != train_params(500, 375, 1, 3, 3)
    flips = [train_params(500, 375, 0, 0, i).flip for i in range(2000)]
    assert 0.45 < sum(flips) / len(flips) < 0.55


def test_fallback_is_centred_clamped_crop() -> None:
    class Never(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b * 10  # every try too large

    c = random_resized_crop(1000, 100, Never(0))
    assert (c.height, c.width) == (100, 133) and c.left == (1000 - 133) // 2


def test_val_geometry_matches_torchvision() -> None:
    from PIL import Image
    from torchvision.transforms import functional as TF

    for w, h in [(500, 375), (375, 500), (256, 256), (333, 500), (1024, 77), (257, 1000)]:
        nw, nh = resize_shorter(w, h, 256)
        assert TF.resize(Image.new("L", (w, h)), 256).size == (nw, nh)
        top, left = center_crop_offsets(nw, nh, 224)
        assert top == round((nh - 224) / 2.0) and left == round((nw - 224) / 2.0)
        box = val_source_box(w, h, 256, 224)
        assert box[0] >= 0 and box[2] <= w + 1e-9 and box[3] <= h + 1e-9


def test_draft_scale() -> None:
    assert draft_scale(400, 400, 224, 224) == 1
    assert draft_scale(448, 448, 224, 224) == 2
    assert draft_scale(1000, 1800, 224, 224) == 4
    assert draft_scale(4000, 4000, 224, 224) == 8


def test_jpeg_size_reads_the_frame_header() -> None:
    import io

    from PIL import Image

    for mode, size, kw in [
        ("RGB", (50, 30), {}),
        ("L", (7, 90), {"progressive": True}),
        ("CMYK", (64, 64), {}),
    ]:
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, "JPEG", **kw)
        assert jpeg_size(buf.getvalue()) == size
    assert jpeg_size(b"\x89PNG\r\n") is None
    assert jpeg_size(b"\xff\xd8\xff\xe0\x00") is None


def test_jpeg_complete_sees_truncation_past_a_thumbnail() -> None:
    import io

    from PIL import Image

    from shufflenet_trainer.data.decode import gpu_jpeg_size, jpeg_complete, jpeg_info

    thumb = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(thumb, "JPEG")
    exif = Image.Exif()
    buf = io.BytesIO()
    img = Image.effect_noise((300, 200), 40).convert("RGB")
    # An APP segment holding a whole JPEG (end marker included), as EXIF thumbnails do.
    img.save(buf, "JPEG", exif=exif.tobytes() + thumb.getvalue(), quality=90)
    data = buf.getvalue()
    assert jpeg_info(data) == (300, 200, 3)
    assert jpeg_complete(data)
    assert not jpeg_complete(data[: len(data) // 2])
    assert not jpeg_complete(data[: len(data) - 3])
    # What the GPU path sends to nvJPEG: complete 1- or 3-component JPEGs only.
    assert gpu_jpeg_size(data) == (300, 200)
    assert gpu_jpeg_size(data[: len(data) // 2]) is None
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_info(cmyk.getvalue())[2] == 4 and gpu_jpeg_size(cmyk.getvalue()) is None
