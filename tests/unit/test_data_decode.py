"""Decoding real photographs: validation pixels as torchvision's, training crops, odd files.

Photos come from scikit-learn's ``load_sample_images`` (and scikit-image's ``skimage.data``
when installed), re-encoded as JPEG at ImageNet-like sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from helpers.photos import imagenet_like, package_photos, write_photo_jpegs
from PIL import Image

from shufflenet_trainer.data.build import LoaderSettings, build_loaders
from shufflenet_trainer.data.decode import (
    decode_train,
    decode_train_tv,
    decode_val,
    simplejpeg_available,
)
from shufflenet_trainer.data.transforms import Crop, TrainParams

# Measured on 40 photos (Pillow 13): resampling only the kept box reproduces
# Resize(256)+CenterCrop(224) up to 1 level (box coordinates are floats: the last bit of a
# filter weight can round the other way). Reduced-scale (draft) decoding of large images
# differs from a full decode by DCT-scaling rounding: mean <= 0.7, max 12 levels measured.
VAL_MAX_DIFF = 1
DRAFT_MEAN_DIFF = 1.5


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_photo_jpegs(tmp_path_factory.mktemp("photos"), 12)


def _reference_val(path: Path, resize: int = 256, crop: int = 224) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(T.CenterCrop(crop)(T.Resize(resize)(im)))


def test_package_photos_are_real_and_imagenet_sized(photos: list[Path]) -> None:
    assert len(package_photos()) >= 2
    for p in photos:
        with Image.open(p) as im:
            assert im.format == "JPEG" and min(im.size) >= 300 and max(im.size) <= 640


def test_val_matches_torchvision(photos: list[Path]) -> None:
    worst = 0
    for p in photos:
        ours = decode_val(str(p), 256, 224)
        ref = _reference_val(p)
        assert ours.shape == ref.shape == (224, 224, 3)
        worst = max(worst, int(np.abs(ours.astype(int) - ref.astype(int)).max()))
    assert worst <= VAL_MAX_DIFF


def test_val_draft_on_large_images_stays_close(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, photo in enumerate(package_photos()[:3]):
        path = tmp_path / f"big{i}.jpg"
        imagenet_like(photo, (1200, 900), rng).save(path, quality=90)
        ours = decode_val(str(path), 256, 224)
        full = decode_val(str(path), 256, 224, use_draft=False)
        assert np.abs(full.astype(int) - _reference_val(path).astype(int)).max() <= VAL_MAX_DIFF
        assert np.abs(ours.astype(float) - full.astype(float)).mean() < DRAFT_MEAN_DIFF


def _fixed(crop: Crop, flip: bool):
    return lambda w, h: TrainParams(crop, flip)


def test_train_crop_matches_torchvision_resized_crop(photos: list[Path]) -> None:
    import torchvision.transforms.functional as TF

    for i, p in enumerate(photos):
        with Image.open(p) as im:
            w, h = im.size
            crop = Crop(10 + i, 20, h // 2 + i, w // 2)
            ref = np.asarray(TF.resized_crop(im.convert("RGB"), *crop, [224, 224]))
        flip = bool(i % 2)
        tv = decode_train_tv(str(p), 224, _fixed(crop, flip))
        pil = decode_train(str(p), 224, _fixed(crop, flip), use_draft=False)
        if flip:
            ref = ref[:, ::-1]
        # Same geometry. torch's uint8 resampler matches Pillow's up to rounding (measured
        # max 1 level, mean <= 0.16); Pillow's box resize also reads pixels just outside
        # the crop, which moves border pixels (measured mean <= 0.17, max 14).
        assert np.abs(tv.astype(int) - ref).max() <= 1
        assert np.abs(pil.astype(float) - ref).mean() < 0.5


def _save(arr: np.ndarray, path: Path, mode: str, fmt: str) -> Path:
    Image.fromarray(arr).convert(mode).save(path, fmt)
    return path


def test_formats_and_colour_spaces(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = np.asarray(imagenet_like(package_photos()[0], (500, 375), rng))
    files = {
        "png": _save(arr, tmp_path / "a.png", "RGB", "PNG"),
        "gray": _save(arr, tmp_path / "g.jpg", "L", "JPEG"),
        "cmyk": _save(arr, tmp_path / "c.jpg", "CMYK", "JPEG"),
        "rgba": _save(arr, tmp_path / "t.png", "RGBA", "PNG"),
        "palette": _save(arr, tmp_path / "p.png", "P", "PNG"),
    }
    for name, path in files.items():
        ref = _reference_val(path)
        ours = decode_val(str(path), 256, 224)
        assert ours.shape == (224, 224, 3), name
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= VAL_MAX_DIFF, name
        for decode in (decode_train_tv, decode_train):
            out = decode(str(path), 224, _fixed(Crop(0, 0, 375, 375), False))
            assert out.shape == (224, 224, 3) and out.dtype == np.uint8, name
    gray = decode_train_tv(str(files["gray"]), 224, _fixed(Crop(0, 0, 300, 300), False))
    assert np.array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_truncated_jpeg_raises(photos: list[Path], tmp_path: Path, keep: float) -> None:
    data = photos[0].read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: int(len(data) * keep)])
    # torchvision's decode_jpeg raises RuntimeError, Pillow (decode_train on this file, and
    # decode_val) OSError: "image file is truncated".
    with pytest.raises(RuntimeError):
        decode_train_tv(str(bad), 224, _fixed(Crop(0, 0, 300, 300), False))
    with pytest.raises(OSError):
        decode_train(str(bad), 224, _fixed(Crop(0, 0, 300, 300), False))
    with pytest.raises(OSError):
        decode_val(str(bad), 256, 224)


@pytest.mark.parametrize("decoder", ["auto", "tv-jpeg", "pil-draft"])
def test_loader_on_photos_counts_only_bad_files(
    photos: list[Path], tmp_path: Path, decoder: str
) -> None:
    for split in ("train", "val"):
        for c, name in enumerate(["n01", "n02"]):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for p in photos[c * 6 : c * 6 + 6]:
                (d / p.name).write_bytes(p.read_bytes())
    cut = tmp_path / "train" / "n02" / photos[7].name
    cut.write_bytes(cut.read_bytes()[:3000])
    loaders = build_loaders(
        LoaderSettings(str(tmp_path), batch_size=4, workers=0, drop_last=False, decoder=decoder)
    )
    auto = "sj-jpeg" if simplejpeg_available() else "tv-jpeg"
    assert loaders.stats.decode_path == (auto if decoder == "auto" else decoder)
    n = 0
    for x, y in loaders.train:
        assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.uint8
        n += len(y)
    vals = [x for x, _ in loaders.val]
    assert n == 12 and sum(len(v) for v in vals) == 12
    assert loaders.stats.skipped_files == 1
    # Validation on the host path is the torchvision reference, pixel for pixel.
    first = sorted((tmp_path / "val" / "n01").iterdir())[0]
    ref = torch.from_numpy(_reference_val(first).copy()).permute(2, 0, 1)
    assert (vals[0][0].int() - ref.int()).abs().max() <= VAL_MAX_DIFF
