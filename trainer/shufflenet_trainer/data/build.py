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
from dataclasses import KW_ONLY, dataclass

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
    "LoaderSettings",
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


@dataclass(frozen=True)
class LoaderSettings:
    """What `build_loaders` builds: the data, the batches of one rank, and how to decode.

    ``batch_size`` is per process. ``decoder``: "auto" (the GPU path when ``device`` is an
    available CUDA device where nvJPEG decodes, else sj-jpeg when simplejpeg is installed,
    else tv-jpeg), "sj-jpeg" (host: libjpeg-turbo via simplejpeg for RGB JPEGs, train and
    val, at reduced scale for large crops; other files as tv-jpeg), "tv-jpeg" (host:
    libjpeg-turbo via torchvision for JPEG training crops, Pillow with reduced-scale decoding
    for large crops, other formats and validation), "pil-draft" (Pillow only) or
    "gpu-nvjpeg". ``dummy`` makes ``dummy_size`` synthetic training images of
    ``dummy_classes`` classes instead of reading ``data_dir``.
    """

    data_dir: str | None
    _: KW_ONLY
    batch_size: int
    workers: int
    image_size: int = 224
    val_resize: int = 256
    dummy: bool = False
    dummy_classes: int = 1000
    dummy_size: int = 10000
    channels_last: bool = False
    strict: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True
    pin_memory: bool = False
    device: str = "cpu"
    decoder: str = "auto"


@dataclass(frozen=True)
class _Source:
    """The images the loaders read: class names, split sizes and, for a folder, its
    datasets (None for synthetic data)."""

    class_names: list[str]
    train_n: int
    val_n: int
    datasets: tuple[TrainFolderDataset, ValFolderDataset] | None = None


def build_loaders(s: LoaderSettings) -> Loaders:
    """Train and val loaders for one rank, as `s` says; ``stats.decode_path`` reports the
    decoder chosen. With the GPU path, batches are already on ``s.device``.

    Raises DataError for a missing or malformed folder, ConfigError for impossible sizes.
    """
    _check_config(s)
    path = _pick_decoder(s.decoder, s.device, s.dummy)
    stats = DataStats(skipped_files=0, decode_path=path)
    source = _synthetic_source(s) if s.dummy else _folder_source(s, path)
    train_sampler, val_sampler = _samplers(s, source)
    train: Iterable[tuple[Tensor, Tensor]]
    val: Iterable[tuple[Tensor, Tensor]]
    if source.datasets is None:
        # Made on the training device itself: no workers, no copy to the device per step.
        synth = {
            "num_classes": s.dummy_classes,
            "size": s.image_size,
            "seed": s.seed,
            "device": s.device,
        }
        train = DeviceSyntheticBatches(train_sampler, offset=0, **synth)
        val = DeviceSyntheticBatches(val_sampler, offset=s.dummy_size, **synth)
    else:
        samplers = (train_sampler, val_sampler)
        train, val = _folder_loaders(s, path, source.datasets, samplers, stats)
    return Loaders(
        train=train,
        val=val,
        num_classes=len(source.class_names),
        class_names=source.class_names,
        train_size=source.train_n,
        val_size=source.val_n,
        stats=stats,
        train_sampler=train_sampler,
    )


def _synthetic_source(s: LoaderSettings) -> _Source:
    if s.dummy_classes < 1 or s.dummy_size < 1:
        raise ConfigError("dummy data needs at least 1 class and 1 sample: raise the sizes")
    class_names = [f"class{i:04d}" for i in range(s.dummy_classes)]
    return _Source(class_names, s.dummy_size, max(1, s.dummy_size // 10))


def _folder_source(s: LoaderSettings, path: str) -> _Source:
    if not s.data_dir:
        raise ConfigError("no data directory given: pass DIR (with train/ and val/) or --dummy")
    class_names, train_samples, val_samples = scan_imagefolder(s.data_dir)
    # The GPU path decodes on the host only what nvJPEG is not given, with tv-jpeg.
    train_decode, val_decode = _HOST_DECODERS.get(path, (decode_train_tv, decode_val))
    train_ds = TrainFolderDataset(train_samples, s.image_size, s.seed, s.strict, train_decode)
    val_ds = ValFolderDataset(val_samples, s.val_resize, s.image_size, s.strict, val_decode)
    return _Source(class_names, len(train_samples), len(val_samples), (train_ds, val_ds))


def _samplers(
    s: LoaderSettings, source: _Source
) -> tuple[ShardedBatchSampler, ShardedBatchSampler]:
    """The train and val batch samplers of this rank."""
    common = {"seed": s.seed, "rank": s.rank, "world_size": s.world_size}
    train = ShardedBatchSampler(
        source.train_n, s.batch_size, shuffle=True, drop_last=s.drop_last, **common
    )
    val = ShardedBatchSampler(source.val_n, s.batch_size, shuffle=False, drop_last=False, **common)
    if s.drop_last and len(train) == 0:
        raise ConfigError(
            f"per-process batch size {s.batch_size} exceeds the "
            f"{source.train_n // s.world_size} training images of a rank: lower the batch "
            "size or add data"
        )
    return train, val


def _folder_loaders(
    s: LoaderSettings,
    path: str,
    datasets: tuple[TrainFolderDataset, ValFolderDataset],
    samplers: tuple[ShardedBatchSampler, ShardedBatchSampler],
    stats: DataStats,
) -> tuple[Iterable[tuple[Tensor, Tensor]], Iterable[tuple[Tensor, Tensor]]]:
    """The train and val loaders of a folder, decoding on the host or (gpu-nvjpeg) on the
    device; unreadable files they skip are counted in ``stats``."""

    def _count(n: int) -> None:
        stats.skipped_files = n

    skips = SkipLog(_count)
    (train_ds, val_ds), (train_sampler, val_sampler) = datasets, samplers
    if path == "gpu-nvjpeg":
        from .gpu import GpuBatchLoader, RawDataset

        dev = torch.device(s.device)
        gkw = {
            "workers": s.workers,
            "device": dev,
            "channels_last": s.channels_last,
            "skips": skips,
        }
        return (
            GpuBatchLoader(RawDataset(train_ds), train_sampler, **gkw),
            GpuBatchLoader(RawDataset(val_ds), val_sampler, **gkw),
        )
    pin = s.pin_memory and _on_cuda(s.device)
    lkw = {"workers": s.workers, "pin_memory": pin, "skips": skips}
    return (
        BatchLoader(train_ds, train_sampler, **lkw),
        BatchLoader(val_ds, val_sampler, **lkw),
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


def _check_config(s: LoaderSettings) -> None:
    if s.batch_size < 1:
        raise ConfigError(f"batch size per process is {s.batch_size}: it must be at least 1")
    if s.workers < 0:
        raise ConfigError(f"workers is {s.workers}: it must be 0 or more")
    if s.image_size < 1:
        raise ConfigError(f"image size is {s.image_size}: it must be at least 1")
    if s.val_resize < s.image_size:
        raise ConfigError(
            f"val resize {s.val_resize} is smaller than the image size {s.image_size}: "
            "set val resize >= image size (ImageNet: 256 and 224)"
        )
    if s.world_size < 1 or not 0 <= s.rank < s.world_size:
        raise ConfigError(
            f"rank {s.rank} is outside world size {s.world_size}: fix RANK/WORLD_SIZE"
        )


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
