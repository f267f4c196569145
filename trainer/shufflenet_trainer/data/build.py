"""The ImageNet input pipeline: ImageFolder (or synthetic) data as uint8 batches.

Batches leave the host as uint8 [B, 3, H, W] and are converted and normalised on the device by
:func:`normalize_on_device`, which moves a quarter of the bytes a float pipeline would and
keeps float work off the host cores. Host batches always have channels_last memory (the
decoders produce HWC pixels; reordering them on the host would cost ~4% of a worker's time);
normalize_on_device lays them out as asked, on the device.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .decode import (
    decode_train,
    decode_train_sj,
    decode_train_tv,
    decode_val,
    decode_val_sj,
    simplejpeg_available,
)
from .folder import scan_imagefolder
from .loader import (
    BatchLoader,
    ShardedBatchSampler,
    SkipLog,
    TrainFolderDataset,
    ValFolderDataset,
)
from .synthetic import DeviceSyntheticBatches

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataStats",
    "Loaders",
    "build_loaders",
    "normalize_on_device",
]


@dataclass
class DataStats:
    """Counters for logs and metrics."""

    skipped_files: int  # distinct unreadable/corrupt images skipped so far (train+val)
    decode_path: str  # "sj-jpeg", "tv-jpeg", "pil-draft", "gpu-nvjpeg" or "synthetic"


@dataclass
class Loaders:
    train: Iterable[tuple[Tensor, Tensor]]
    val: Iterable[tuple[Tensor, Tensor]]
    num_classes: int
    class_names: list[str]
    train_size: int
    val_size: int
    stats: DataStats
    train_sampler: ShardedBatchSampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle (and re-draw augmentation) deterministically for ``epoch``; skip the
        first ``start_batch`` batches when resuming inside the epoch."""
        self.train_sampler.set_epoch(epoch, start_batch)


def build_loaders(
    data_dir: str | None,
    *,
    batch_size: int,
    workers: int,
    image_size: int = 224,
    val_resize: int = 256,
    dummy: bool = False,
    dummy_classes: int = 1000,
    dummy_size: int = 10000,
    channels_last: bool = False,
    strict: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    pin_memory: bool = False,
    device: str = "cpu",
    decoder: str = "auto",
) -> Loaders:
    """Train and val loaders for one rank; ``batch_size`` is per process.

    ``decoder``: "auto" (the GPU path when ``device`` is an available CUDA device where
    nvJPEG decodes, else sj-jpeg when simplejpeg is installed, else tv-jpeg), "sj-jpeg"
    (host: libjpeg-turbo via
    simplejpeg for RGB JPEGs, train and val, at reduced scale for large crops; other files
    as tv-jpeg), "tv-jpeg" (host: libjpeg-turbo via torchvision for JPEG training crops,
    Pillow with reduced-scale decoding for large crops, other formats and validation),
    "pil-draft" (Pillow only) or "gpu-nvjpeg". ``stats.decode_path`` reports the choice.
    With the GPU path, batches are already on ``device``.

    Raises DataError for a missing or malformed folder, ConfigError for impossible sizes.
    """
    _check_config(batch_size, workers, image_size, val_resize, rank, world_size)
    path = _pick_decoder(decoder, device, dummy)
    stats = DataStats(skipped_files=0, decode_path=path)

    def _count(n: int) -> None:
        stats.skipped_files = n

    skips = SkipLog(_count)
    pin = pin_memory and _on_cuda(device)
    common = {"seed": seed, "rank": rank, "world_size": world_size}

    if dummy:
        if dummy_classes < 1 or dummy_size < 1:
            raise ConfigError("dummy data needs at least 1 class and 1 sample: raise the sizes")
        val_n = max(1, dummy_size // 10)
        class_names = [f"class{i:04d}" for i in range(dummy_classes)]
        train_n = dummy_size
    else:
        if not data_dir:
            raise ConfigError("no data directory given: pass DIR (with train/ and val/) or --dummy")
        class_names, train_samples, val_samples = scan_imagefolder(data_dir)
        # The GPU path decodes on the host only what nvJPEG is not given, with tv-jpeg.
        train_decode, val_decode = _HOST_DECODERS.get(path, (decode_train_tv, decode_val))
        train_ds = TrainFolderDataset(train_samples, image_size, seed, strict, train_decode)
        val_ds = ValFolderDataset(val_samples, val_resize, image_size, strict, val_decode)
        train_n, val_n = len(train_samples), len(val_samples)

    train_sampler = ShardedBatchSampler(
        train_n, batch_size, shuffle=True, drop_last=drop_last, **common
    )
    val_sampler = ShardedBatchSampler(val_n, batch_size, shuffle=False, drop_last=False, **common)
    if drop_last and len(train_sampler) == 0:
        raise ConfigError(
            f"per-process batch size {batch_size} exceeds the {train_n // world_size} training "
            f"images of a rank: lower the batch size or add data"
        )
    train: Iterable[tuple[Tensor, Tensor]]
    val: Iterable[tuple[Tensor, Tensor]]
    if dummy:
        # Made on the training device itself: no workers, no copy to the device per step.
        synth = {"num_classes": dummy_classes, "size": image_size, "seed": seed, "device": device}
        train = DeviceSyntheticBatches(train_sampler, offset=0, **synth)
        val = DeviceSyntheticBatches(val_sampler, offset=dummy_size, **synth)
    elif path == "gpu-nvjpeg":
        from .gpu import GpuBatchLoader, RawDataset

        dev = torch.device(device)
        gkw = {"workers": workers, "device": dev, "channels_last": channels_last, "skips": skips}
        train = GpuBatchLoader(RawDataset(train_ds), train_sampler, **gkw)
        val = GpuBatchLoader(RawDataset(val_ds), val_sampler, **gkw)
    else:
        train = BatchLoader(train_ds, train_sampler, workers=workers, pin_memory=pin, skips=skips)
        val = BatchLoader(val_ds, val_sampler, workers=workers, pin_memory=pin, skips=skips)
    return Loaders(
        train=train,
        val=val,
        num_classes=len(class_names),
        class_names=class_names,
        train_size=train_n,
        val_size=val_n,
        stats=stats,
        train_sampler=train_sampler,
    )


DECODERS = ("auto", "sj-jpeg", "tv-jpeg", "pil-draft", "gpu-nvjpeg")
_HOST_DECODERS = {
    "sj-jpeg": (decode_train_sj, decode_val_sj),
    "tv-jpeg": (decode_train_tv, decode_val),
    "pil-draft": (decode_train, decode_val),
}


def _pick_decoder(decoder: str, device: str, dummy: bool) -> str:
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}: use one of {', '.join(DECODERS)}")
    if dummy:
        return "synthetic"
    gpu = _on_cuda(device)
    if decoder == "auto":
        return auto_decoder(
            on_cuda=gpu,
            nvjpeg_works=gpu and nvjpeg_works(device),
            simplejpeg=simplejpeg_available(),
        )
    if decoder == "sj-jpeg" and not simplejpeg_available():
        raise ConfigError(
            "decoder sj-jpeg needs the simplejpeg package (in the trainer extra): install it "
            "or use decoder tv-jpeg"
        )
    if decoder == "gpu-nvjpeg" and not gpu:
        raise ConfigError(
            f"decoder gpu-nvjpeg needs an available CUDA device (device is {device!r}): "
            "use decoder auto or tv-jpeg"
        )
    return decoder


def auto_decoder(*, on_cuda: bool, nvjpeg_works: bool, simplejpeg: bool) -> str:
    """What ``decoder auto`` picks: nvJPEG on a CUDA device where it decodes (25x one host
    thread on an H200, docs/benchmarks.md), else the fastest host decoder installed."""
    if on_cuda and nvjpeg_works:
        return "gpu-nvjpeg"
    return "sj-jpeg" if simplejpeg else "tv-jpeg"


@functools.lru_cache(maxsize=8)
def nvjpeg_works(device: str) -> bool:
    """Whether torchvision decodes a JPEG on ``device`` (a build without nvJPEG, or a driver
    that refuses it, raises): probed once with a small encoded image."""
    from torchvision.io import encode_jpeg

    from .decode import decode_jpeg

    image = torch.arange(3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (decode.py)
            warnings.simplefilter("ignore", DeprecationWarning)
            encoded = encode_jpeg(image.view(3, 16, 16))
        decoded = decode_jpeg(encoded, device=device)
        return tuple(decoded.shape) == (3, 16, 16)
    except Exception as exc:  # any failure means: decode on the host, as before
        log.warning("nvJPEG decode on %s failed (%s): decoding on the host", device, exc)
        return False


def _check_config(
    batch_size: int, workers: int, image_size: int, val_resize: int, rank: int, world_size: int
) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch size per process is {batch_size}: it must be at least 1")
    if workers < 0:
        raise ConfigError(f"workers is {workers}: it must be 0 or more")
    if image_size < 1:
        raise ConfigError(f"image size is {image_size}: it must be at least 1")
    if val_resize < image_size:
        raise ConfigError(
            f"val resize {val_resize} is smaller than the image size {image_size}: "
            "set val resize >= image size (ImageNet: 256 and 224)"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}: fix RANK/WORLD_SIZE")


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    # Folding the /255 of ToTensor into mean and std: one sub and one mul per element.
    mean = torch.tensor([m * 255.0 for m in IMAGENET_MEAN], device=device).view(1, 3, 1, 1)
    inv_std = torch.tensor([1.0 / (s * 255.0) for s in IMAGENET_STD], device=device)
    return mean, inv_std.view(1, 3, 1, 1)


def normalize_on_device(
    images_uint8: Tensor,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Tensor:
    """uint8 [B,3,H,W] -> normalised ``dtype`` on ``device`` (ImageNet mean/std).

    The copy is non_blocking (overlaps compute when the source is pinned); the conversion
    runs on the device, in float32 before any cast to a lower precision.
    """
    device = torch.device(device)
    x = images_uint8.to(device, non_blocking=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    mean, inv_std = _mean_std(x.device)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
    out.copy_(x)
    out.sub_(mean).mul_(inv_std)
    return out if dtype == torch.float32 else out.to(dtype)


def _on_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()
