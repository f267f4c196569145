"""Batch-level datasets, the sharded sampler and the loader wrapper.

A worker builds a whole batch (one uint8 tensor, one IPC transfer) instead of single
samples, and the sampler hands it ``(epoch, indices)`` so that persistent workers need no
epoch state: the augmentation of a sample depends only on (seed, epoch, index).

Unreadable images: in training the sample is replaced by the next readable index of the
dataset (wrapping), augmented with that index's own parameters, so batch shapes stay fixed
and the batch is the same whichever worker builds it; in validation the sample is dropped
(a batch may be smaller), so accuracy counts only real images. With ``strict`` the first
unreadable image ends the run with a DataError naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .transforms import TrainParams, train_params

log = logging.getLogger("shufflenet_trainer.data")

# Consecutive unreadable files after which a training batch gives up: a folder that bad is
# a broken copy, not a few corrupt images.
MAX_SUBSTITUTES = 64

BatchKey = tuple[int, list[int]]


@dataclass
class Batch:
    """What a worker returns: uint8 images in NHWC, the layout decoders produce (each image
    is copied once, without a transpose; the loader hands NCHW views of them to training)."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    def pin_memory(self) -> Batch:
        # Called by DataLoader's pin-memory thread.
        return Batch(
            self.images.pin_memory(),
            self.labels.pin_memory(),
            self.skipped,
            self.error,
        )


def _alloc(n: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    t = torch.empty((n, size, size, 3), dtype=torch.uint8)
    return t, t.numpy()


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


Sample = tuple[np.ndarray | None, int, list[tuple[str, str]], str | None]


class _FolderBatches(Dataset):
    """Batches of an image list: ``sample()`` gives each image, this assembles the batch.

    An image ``sample()`` returns as None (unreadable, not strict) is left out of the batch;
    an error ends the batch (and the run: cli.py's `main` reports it and exits).
    """

    samples: list[tuple[str, int]]
    size: int

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, epoch: int, index: int) -> Sample:
        raise NotImplementedError

    def __getitem__(self, key: BatchKey) -> Batch:  # type: ignore[override]
        epoch, indices = key
        images, buf = _alloc(len(indices), self.size)
        labels = torch.empty(len(indices), dtype=torch.int64)
        skipped: list[tuple[str, str]] = []
        k = 0
        for index in indices:
            arr, label, skip, err = self.sample(epoch, index)
            skipped.extend(skip)
            if err is not None:
                return Batch(images, labels, skipped, err)
            if arr is None:
                continue
            buf[k] = arr
            labels[k] = label
            k += 1
        if k < len(indices):
            images, labels = images[:k], labels[:k]
        return Batch(images, labels, skipped)


class TrainFolderDataset(_FolderBatches):
    """Random-resized-crop batches of an image list; ``decode(path, size, params_fn)`` -> HWC.
    A bad file is replaced by the next readable one, so batches stay full."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        size: int,
        seed: int,
        strict: bool,
        decode: Callable[[str, int, Callable[[int, int], TrainParams]], np.ndarray],
    ) -> None:
        self.samples = samples
        self.size = size
        self.seed = seed
        self.strict = strict
        self.decode = decode

    def sample(self, epoch: int, index: int) -> Sample:
        """(HWC image, label, skipped files, error) for ``index``, substituting bad files."""
        skipped: list[tuple[str, str]] = []
        n = len(self.samples)
        for attempt in range(MAX_SUBSTITUTES):
            j = (index + attempt) % n
            path, label = self.samples[j]
            try:
                arr = self.decode(
                    path, self.size, lambda w, h, j=j: train_params(w, h, self.seed, epoch, j)
                )
            except Exception as exc:
                if self.strict:
                    return None, label, skipped, _strict_msg(path, exc)
                skipped.append((path, _reason(exc)))
                continue
            return arr, label, skipped, None
        return (
            None,
            -1,
            skipped,
            (
                f"{MAX_SUBSTITUTES} consecutive unreadable images from "
                f"{self.samples[index][0]}: check or re-copy the dataset"
            ),
        )


class ValFolderDataset(_FolderBatches):
    """Resize + centre-crop batches; unreadable images are dropped from the batch."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        resize: int,
        size: int,
        strict: bool,
        decode: Callable[[str, int, int], np.ndarray],
    ) -> None:
        self.samples = samples
        self.resize = resize
        self.size = size
        self.strict = strict
        self.decode = decode

    def sample(self, epoch: int, index: int) -> Sample:
        """(HWC image or None if unreadable, label, skipped files, error)."""
        path, label = self.samples[index]
        try:
            return self.decode(path, self.resize, self.size), label, [], None
        except Exception as exc:
            if self.strict:
                return None, label, [], _strict_msg(path, exc)
            return None, label, [(path, _reason(exc))], None


def _strict_msg(path: str, exc: BaseException) -> str:
    return (
        f"unreadable image {path} ({_reason(exc)}): delete or replace it, "
        "or run without strict mode to skip such files"
    )


class ShardedBatchSampler:
    """Yields ``(epoch, indices)`` per batch for one rank.

    Training order follows torch's DistributedSampler: a permutation seeded with
    ``seed + epoch``, cut to a multiple of ``world_size`` (or padded by wrapping when not
    ``drop_last``), then every ``world_size``-th index from ``rank``. Without shuffle the
    shards are ``indices[rank::world_size]`` with no padding, so validation sees each sample
    exactly once over all ranks.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` > 0 continues an epoch interrupted after that many
        batches (a mid-epoch checkpoint), without loading the skipped ones."""
        self.epoch = epoch
        self.start_batch = start_batch

    def shard(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world_size))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.drop_last:
            order = order[: self.n - self.n % self.world_size]
        elif self.n % self.world_size:
            pad = self.world_size - self.n % self.world_size
            order += (order * (pad // max(1, len(order)) + 1))[:pad]
        return order[self.rank :: self.world_size]

    def _shard_len(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world_size))
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        m = self._shard_len()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[BatchKey]:
        shard = self.shard()
        stop = len(shard) - len(shard) % self.batch_size if self.drop_last else len(shard)
        for i in range(self.start_batch * self.batch_size, stop, self.batch_size):
            yield self.epoch, shard[i : i + self.batch_size]


class SkipLog:
    """Unreadable files seen in this process, shared by the train and val loaders."""

    def __init__(self, on_change: Callable[[int], None]) -> None:
        self.paths: set[str] = set()
        self.on_change = on_change

    def add(self, items: list[tuple[str, str]]) -> None:
        for path, reason in items:
            if path not in self.paths:
                self.paths.add(path)
                log.warning("skipped unreadable image %s (%s)", path, reason)
        self.on_change(len(self.paths))


def _identity(x: Batch) -> Batch:
    return x


def batch_loader(
    dataset: Dataset, sampler: ShardedBatchSampler, workers: int, *, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over a dataset that builds whole batches itself (index = one batch).

    Workers persist across epochs: re-forking them each epoch costs seconds per rank. They
    come from a fork server, not a fork of the trainer: by the time a loader first starts
    its workers (validation's, at the end of the first epoch) the trainer runs threads
    (collectives, watchdog, metrics server) whose locks a plain fork would copy held.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context="forkserver" if workers > 0 else None,
    )


class BatchLoader:
    """Iterable of (images uint8 [B,3,H,W], labels int64 [B]) over a batch dataset.

    Worker prefetch is DataLoader's own, bounded by ``prefetch_factor`` batches per worker,
    so time spent waiting for data shows up around ``next()``.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: ShardedBatchSampler,
        *,
        workers: int,
        pin_memory: bool,
        skips: SkipLog,
    ) -> None:
        self.sampler = sampler
        self.skips = skips
        self.loader = batch_loader(dataset, sampler, workers, pin_memory=pin_memory)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in self.loader:
            if b.skipped:
                self.skips.add(b.skipped)
            if b.error is not None:
                raise DataError(b.error)
            if len(b.labels) == 0:
                continue
            yield b.images.permute(0, 3, 1, 2), b.labels
