"""Synthetic batches (``--dummy``), generated on the training device: no folder, no decode,
no worker processes, no host-to-device copy per step.

Host workers making noise images measured the host, not the step: on an H200 the CLI's
FPS@all with host-made synthetic batches was 3,158 img/s against 5,900-8,600 for the step
benchmark, with 13% of the time waiting for data (docs/benchmarks.md). Here each batch is
drawn on the device by the device's own random generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .loader import ShardedBatchSampler

__all__ = ["DeviceSyntheticBatches", "batch_seed"]


def batch_seed(seed: int, offset: int, rank: int, epoch: int, batch: int) -> int:
    """The generator seed of one batch: a pure function of where the batch is in the run, so
    a resumed epoch (which skips its first batches) draws the same batches as an unbroken one.
    """
    # Fields in mixed radix: distinct for any run under 10**6 batches an epoch, 10**6 epochs
    # and 10**4 ranks; masked to the 63 bits a generator seed takes.
    key = (seed * 1_000_003 + offset) * 10_007 + rank
    return ((key * 1_000_003 + epoch) * 1_000_003 + batch) & (2**63 - 1)


class DeviceSyntheticBatches:
    """Iterable of (images uint8 [B,3,S,S] channels_last, labels int64 [B]) on ``device``.

    Batch sizes, batch count, epochs and resumption follow ``sampler`` (the same
    ShardedBatchSampler the folder loaders use); the pixels and labels of batch ``b`` of
    ``epoch`` on ``rank`` come from :func:`batch_seed`. ``offset`` keeps validation batches
    distinct from training ones.
    """

    workers = 0  # no worker processes: nothing runs on the host but the loop

    def __init__(
        self,
        sampler: ShardedBatchSampler,
        *,
        num_classes: int,
        size: int,
        seed: int,
        offset: int,
        device: torch.device | str,
    ) -> None:
        self.sampler = sampler
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.offset = offset
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(self.device)
        rank, epoch = self.sampler.rank, self.sampler.epoch
        for b, (_, indices) in enumerate(self.sampler, start=self.sampler.start_batch):
            generator.manual_seed(batch_seed(self.seed, self.offset, rank, epoch, b))
            n = len(indices)
            # NHWC memory seen as NCHW, as the host decoders deliver their batches.
            images = torch.randint(
                0,
                256,
                (n, self.size, self.size, 3),
                generator=generator,
                dtype=torch.uint8,
                device=self.device,
            ).permute(0, 3, 1, 2)
            labels = torch.randint(
                0, self.num_classes, (n,), generator=generator, device=self.device
            )
            yield images, labels
