"""The sj-jpeg host path (simplejpeg): same pixels as the other decoders, same odd-file rules.

Tolerances are those of ``test_data_decode.py``; the photos are the same package photos.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from helpers.photos import imagenet_like, package_photos, write_photo_jpegs
from PIL import Image

import shufflenet_trainer.data.decode as decode_mod
from shufflenet_trainer.data.build import LoaderSettings, build_loaders
from shufflenet_trainer.data.decode import (
    decode_jpeg,
    decode_train_sj,
    decode_train_tv,
    decode_val,
    decode_val_sj,
)
from shufflenet_trainer.data.transforms import Crop, TrainParams, train_params
from shufflenet_trainer.errors import ConfigError

# The tolerances of test_data_decode.py (where they are explained): the sj path must meet
# the same ones.
VAL_MAX_DIFF = 1
DRAFT_MEAN_DIFF = 1.5
# What the decoders raise on a bad file: torchvision's decode_jpeg a RuntimeError, Pillow an
# OSError. The loaders skip such a file; anything else is a bug and must fail the test.
DECODE_ERRORS = (RuntimeError, OSError)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_photo_jpegs(tmp_path_factory.mktemp("photos"), 12)


@pytest.fixture(scope="module")
def big_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # Large enough for reduced-scale decoding of val and of large training crops; odd sizes
    # check that the scaled size rounds up as libjpeg's does.
    out = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    paths = []
    for i, (photo, size) in enumerate(
        zip(package_photos()[:3], [(1200, 900), (1203, 901), (901, 1203)], strict=True)
    ):
        path = out / f"big{i}.jpg"
        imagenet_like(photo, size, rng).save(path, quality=90)
        paths.append(path)
    return paths


def _fixed(crop: Crop, flip: bool):
    return lambda w, h: TrainParams(crop, flip)


def _reference_val(path: Path, resize: int = 256, crop: int = 224) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(TF.center_crop(TF.resize(im.convert("RGB"), resize), crop))


def _save(arr: np.ndarray, path: Path, mode: str, fmt: str) -> Path:
    Image.fromarray(arr).convert(mode).save(path, fmt)
    return path


def test_full_decode_is_pixel_identical_to_torchvision(photos: list[Path]) -> None:
    for p in photos:
        data = p.read_bytes()
        with Image.open(p) as im:
            w, h = im.size
        ours = decode_mod._sj_rgb(data, w, h, 1)
        ref = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        assert ours is not None and ours.dtype == np.uint8
        assert np.array_equal(ours, ref.permute(1, 2, 0).numpy()), p.name


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scaled_decode_is_pillow_draft(big_photos: list[Path], scale: int) -> None:
    for p in big_photos:
        with Image.open(p) as im:
            w, h = im.size
            im.draft("RGB", (w // scale, h // scale))
            ref = np.asarray(im.convert("RGB"))
        ours = decode_mod._sj_rgb(p.read_bytes(), w, h, scale)
        assert ours is not None
        assert ours.shape == ref.shape == (-(-h // scale), -(-w // scale), 3)
        # Both are libjpeg-turbo's DCT scaling: identical when measured; the tolerance
        # tests below are what the pipeline needs.
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= VAL_MAX_DIFF


def test_train_matches_tv_jpeg_and_torchvision(photos: list[Path]) -> None:
    for i, p in enumerate(photos):
        with Image.open(p) as im:
            w, h = im.size
            crop = Crop(10 + i, 20, h // 2 + i, w // 2)
            ref = np.asarray(TF.resized_crop(im.convert("RGB"), *crop, [224, 224]))
        flip = bool(i % 2)
        ours = decode_train_sj(str(p), 224, _fixed(crop, flip))
        if flip:
            ref = ref[:, ::-1]
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        # Same decoded pixels and the same torch resampler as tv-jpeg.
        assert np.array_equal(ours, decode_train_tv(str(p), 224, _fixed(crop, flip)))
        assert np.abs(ours.astype(int) - ref).max() <= 1

        # The sampled crops of a real epoch too.
        def params(w: int, h: int, i: int = i) -> TrainParams:
            return train_params(w, h, 0, 3, i)

        assert np.array_equal(
            decode_train_sj(str(p), 224, params), decode_train_tv(str(p), 224, params)
        )


def test_val_matches_torchvision(photos: list[Path]) -> None:
    worst = 0
    for p in photos:
        ours = decode_val_sj(str(p), 256, 224)
        ref = _reference_val(p)
        assert ours.shape == ref.shape == (224, 224, 3)
        worst = max(worst, int(np.abs(ours.astype(int) - ref.astype(int)).max()))
    assert worst <= VAL_MAX_DIFF


def test_large_images_decode_at_reduced_scale_and_stay_close(big_photos: list[Path]) -> None:
    for p in big_photos:
        ours = decode_val_sj(str(p), 256, 224)
        full = decode_val(str(p), 256, 224, use_draft=False)
        assert np.abs(ours.astype(float) - full.astype(float)).mean() < DRAFT_MEAN_DIFF
        assert np.abs(ours.astype(int) - decode_val(str(p), 256, 224).astype(int)).max() <= 1
        # Crops decoded at 1/2, 1/2 and 1/4 scale (at least 224 pixels each way after it).
        # Training crops have no tolerance against a full decode (measured mean up to 2.8
        # on detailed photos at 1/4, the draft path's own): they must be the pixels of
        # tv-jpeg, which takes Pillow's draft decode for these crops.
        for j, crop in enumerate(
            (Crop(0, 0, 460, 460), Crop(3, 5, 700, 650), Crop(0, 0, 900, 900))
        ):
            params = _fixed(crop, bool(j % 2))
            ours = decode_train_sj(str(p), 224, params)
            assert ours.shape == (224, 224, 3)
            before = decode_train_tv(str(p), 224, params)
            assert np.abs(ours.astype(int) - before.astype(int)).max() <= 1  # measured: 0


def test_other_formats_take_the_general_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = np.asarray(imagenet_like(package_photos()[0], (500, 375), rng))
    files = {
        "png": _save(arr, tmp_path / "a.png", "RGB", "PNG"),
        "gray": _save(arr, tmp_path / "g.jpg", "L", "JPEG"),
        "cmyk": _save(arr, tmp_path / "c.jpg", "CMYK", "JPEG"),
        "rgba": _save(arr, tmp_path / "t.png", "RGBA", "PNG"),
        "palette": _save(arr, tmp_path / "p.png", "P", "PNG"),
        "jpeg-named-png": tmp_path / "j.png",
    }
    files["jpeg-named-png"].write_bytes(_save(arr, tmp_path / "x.jpg", "RGB", "JPEG").read_bytes())
    for name, path in files.items():
        ours = decode_val_sj(str(path), 256, 224)
        assert ours.shape == (224, 224, 3), name
        assert np.abs(ours.astype(int) - _reference_val(path).astype(int)).max() <= VAL_MAX_DIFF
        if name != "jpeg-named-png":  # only RGB JPEGs are simplejpeg's: the rest as before
            assert np.array_equal(ours, decode_val(str(path), 256, 224)), name
        params = _fixed(Crop(0, 0, 375, 375), True)
        out = decode_train_sj(str(path), 224, params)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8, name
        assert np.array_equal(out, decode_train_tv(str(path), 224, params)), name
    gray = decode_train_sj(str(files["gray"]), 224, _fixed(Crop(0, 0, 300, 300), False))
    assert np.array_equal(gray[..., 0], gray[..., 2])


def _corruptions(data: bytes) -> dict[str, bytes]:
    n = len(data)
    return {
        "truncated-half": data[: n // 2],
        "truncated-90": data[: int(n * 0.9)],
        "header-only": data[: int(n * 0.02)],
        "no-end-marker": data[:-2],
        "stray-restart-marker": data[: n // 2] + b"\xff\xd3" + data[n // 2 :],
        "zeroed-scan-bytes": data[: n // 2] + b"\x00" * 200 + data[n // 2 + 200 :],
        "end-marker-mid-scan": data[: n // 2] + b"\xff\xd9" + data[n // 2 :],
        "flipped-scan-byte": data[: n // 2] + bytes([data[n // 2] ^ 0xFF]) + data[n // 2 + 1 :],
        "trailing-junk": data + b"junk" * 10,
    }


def _outcome(fn):
    try:
        return fn()
    except DECODE_ERRORS as exc:  # a decoder error is a skip in the loaders
        return exc


def test_corrupt_files_behave_as_before(photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    params = _fixed(Crop(0, 0, 300, 300), False)
    for name, data in _corruptions(photos[0].read_bytes()).items():
        bad.write_bytes(data)
        ours = _outcome(lambda: decode_train_sj(str(bad), 224, params))
        before = _outcome(lambda: decode_train_tv(str(bad), 224, params))
        if isinstance(before, Exception):
            assert isinstance(ours, Exception), name
        else:
            assert isinstance(ours, np.ndarray) and np.array_equal(ours, before), name
        ours = _outcome(lambda: decode_val_sj(str(bad), 256, 224))
        before = _outcome(lambda: decode_val(str(bad), 256, 224))
        if isinstance(before, Exception):
            assert isinstance(ours, Exception), name
        else:
            assert isinstance(ours, np.ndarray), name
            assert np.abs(ours.astype(int) - before.astype(int)).max() <= VAL_MAX_DIFF, name
    for name in ("truncated-half", "truncated-90", "header-only", "no-end-marker"):
        bad.write_bytes(_corruptions(photos[0].read_bytes())[name])
        with pytest.raises(RuntimeError):  # torchvision's decode_jpeg
            decode_train_sj(str(bad), 224, params)
        with pytest.raises(OSError):  # Pillow: "image file is truncated"
            decode_val_sj(str(bad), 256, 224)


def test_auto_picks_sj_jpeg_and_falls_back_without_simplejpeg(
    photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split in ("train", "val"):
        d = tmp_path / split / "n01"
        d.mkdir(parents=True)
        for p in photos[:4]:
            (d / p.name).write_bytes(p.read_bytes())
    base = LoaderSettings(str(tmp_path), batch_size=2, workers=0, drop_last=False)
    assert build_loaders(base).stats.decode_path == "sj-jpeg"
    sj = build_loaders(replace(base, decoder="sj-jpeg"))
    tv = build_loaders(replace(base, decoder="tv-jpeg"))
    assert (sj.stats.decode_path, tv.stats.decode_path) == ("sj-jpeg", "tv-jpeg")
    for (xs, ys), (xt, yt) in zip(sj.train, tv.train, strict=True):
        assert torch.equal(xs, xt) and torch.equal(ys, yt)
    for (xs, _), (xt, _) in zip(sj.val, tv.val, strict=True):
        assert (xs.int() - xt.int()).abs().max() <= VAL_MAX_DIFF

    monkeypatch.setattr(decode_mod, "simplejpeg", None)
    assert build_loaders(base).stats.decode_path == "tv-jpeg"
    with pytest.raises(ConfigError, match="simplejpeg"):
        build_loaders(replace(base, decoder="sj-jpeg"))
    # Called directly without simplejpeg, the sj functions are the tv-jpeg/Pillow path.
    params = _fixed(Crop(5, 5, 200, 250), True)
    p = str(photos[0])
    assert np.array_equal(decode_train_sj(p, 224, params), decode_train_tv(p, 224, params))
    assert np.array_equal(decode_val_sj(p, 256, 224), decode_val(p, 256, 224))
