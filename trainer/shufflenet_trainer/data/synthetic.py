"""Deterministic synthetic batches (``--dummy``): no folder, no decode cost."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .loader import Batch, BatchKey


class SyntheticDataset(Dataset):
    """Sample ``i`` is uniform uint8 noise seeded by (seed, offset + i), label i mod classes.

    Content depends only on the index, so every epoch, worker count and rank sees the same
    sample ``i``; ``offset`` keeps validation samples distinct from training ones.
    """

    def __init__(self, n: int, num_classes: int, size: int, seed: int, offset: int) -> None:
        self.n = n
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.offset = offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: BatchKey) -> Batch:  # type: ignore[override]
        _, indices = key
        shape = (self.size, self.size, 3)  # NHWC, as the folder datasets give it
        images = torch.empty((len(indices), *shape), dtype=torch.uint8)
        g = torch.Generator()
        for k, i in enumerate(indices):
            g.manual_seed(self.seed * 1_000_003 + self.offset + i)
            torch.randint(0, 256, shape, generator=g, dtype=torch.uint8, out=images[k])
        labels = torch.tensor([i % self.num_classes for i in indices], dtype=torch.int64)
        return Batch(images, labels)
