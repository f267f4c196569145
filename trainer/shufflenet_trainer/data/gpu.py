"""GPU decode path: workers read bytes and draw crops; nvJPEG decodes the batch on the GPU.

Workers only read files, parse JPEG headers and draw the crops, so a few host cores feed a
fast GPU. The main process decodes all JPEGs of a batch with one batched
``torchvision.io.decode_jpeg(..., device="cuda")`` call and crops/resizes on the GPU
(antialiased bilinear in float32, rounded to uint8). Files nvJPEG is not given (not JPEG,
unparsable header) are decoded on the host by the worker, and files that fail on the GPU are
retried on the host in the main process, with the host path's skip/substitute rules, so a
batch holds the same samples either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from .decode import decode_jpeg, gpu_jpeg_size
from .loader import (
    BatchKey,
    ShardedBatchSampler,
    SkipLog,
    TrainFolderDataset,
    ValFolderDataset,
    batch_loader,
)
from .transforms import center_crop_offsets, resize_shorter, train_params


@dataclass
class RawBatch:
    """JPEG bytes packed in one tensor (one IPC transfer) plus host-decoded leftovers."""

    blob: torch.Tensor  # uint8: the batch's JPEG files back to back
    lengths: list[int]
    slots: list[int]  # batch position of each JPEG
    sizes: list[tuple[int, int]]  # (height, width) from each JPEG header
    geometry: list[tuple[int, int, int, int, bool]]  # train crop: top, left, height, width, flip
    indices: list[int]  # dataset index of each JPEG, for a host retry
    host: list[tuple[int, np.ndarray | None]]  # (batch position, HWC or None: dropped)
    labels: torch.Tensor
    epoch: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def _pack(datas: list[bytes]) -> torch.Tensor:
    blob = torch.empty(sum(len(d) for d in datas), dtype=torch.uint8)
    view = blob.numpy()
    o = 0
    for d in datas:
        view[o : o + len(d)] = np.frombuffer(d, dtype=np.uint8)
        o += len(d)
    return blob


class RawDataset(Dataset):
    """Worker side of the GPU path over a host dataset (train or val)."""

    def __init__(self, host: TrainFolderDataset | ValFolderDataset) -> None:
        self.host = host
        self.train = isinstance(host, TrainFolderDataset)

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, key: BatchKey) -> RawBatch:  # type: ignore[override]
        epoch, indices = key
        rb = RawBatch(
            _pack([]), [], [], [], [], [], [], torch.empty(len(indices), dtype=torch.int64), epoch
        )
        datas: list[bytes] = []
        for k, index in enumerate(indices):
            path, label = self.host.samples[index]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            size = gpu_jpeg_size(data)
            if size is None:  # decoded here with the host path's rules
                arr, label, skip, err = self.host.sample(epoch, index)
                rb.skipped.extend(skip)
                if err is not None:
                    rb.error = err
                    return rb
                rb.host.append((k, arr))
                rb.labels[k] = label
                continue
            w, h = size
            if self.train:
                p = train_params(w, h, self.host.seed, epoch, index)
                rb.geometry.append((p.crop.top, p.crop.left, p.crop.height, p.crop.width, p.flip))
            datas.append(data)
            rb.slots.append(k)
            rb.sizes.append((h, w))
            rb.indices.append(index)
            rb.labels[k] = label
        rb.blob = _pack(datas)
        rb.lengths = [len(d) for d in datas]
        return rb


def _resize_u8(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    y = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


class GpuBatchLoader:
    """Iterable of (uint8 images [B,3,S,S] on the GPU, int64 labels on the GPU)."""

    def __init__(
        self,
        dataset: RawDataset,
        sampler: ShardedBatchSampler,
        *,
        workers: int,
        device: torch.device,
        channels_last: bool,
        skips: SkipLog,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.device = device
        self.channels_last = channels_last
        self.skips = skips
        # Validation resizes the shorter side as the host path does (0: a train loader).
        host = dataset.host
        self.val_resize = host.resize if isinstance(host, ValFolderDataset) else 0
        self.loader = batch_loader(dataset, sampler, workers)

    def __len__(self) -> int:
        return len(self.sampler)

    def _decode(self, rb: RawBatch) -> list[torch.Tensor | None]:
        if not rb.lengths:
            return []
        datas = list(torch.split(rb.blob, rb.lengths))
        try:
            return list(decode_jpeg(datas, device=self.device))
        except RuntimeError:
            # One bad file fails the batched call: decode file by file to find it.
            out: list[torch.Tensor | None] = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _place(self, img: torch.Tensor, j: int, rb: RawBatch, size: int) -> torch.Tensor:
        if self.dataset.train:
            top, left, h, w, flip = rb.geometry[j]
            res = _resize_u8(img[:, top : top + h, left : left + w], size, size)
            return res.flip(2) if flip else res
        nw, nh = resize_shorter(img.shape[2], img.shape[1], self.val_resize)
        t, lft = center_crop_offsets(nw, nh, size)
        return _resize_u8(img, nh, nw)[:, t : t + size, lft : lft + size]

    def _assemble(self, rb: RawBatch) -> tuple[torch.Tensor, torch.Tensor]:
        host_ds = self.dataset.host
        size = host_ds.size
        n = len(rb.labels)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(
            (n, 3, size, size), dtype=torch.uint8, device=self.device, memory_format=fmt
        )
        labels = rb.labels.clone()
        keep = [True] * n
        host = list(rb.host)
        for j, img in enumerate(self._decode(rb)):
            k = rb.slots[j]
            if img is not None and tuple(img.shape[1:]) == rb.sizes[j]:
                out[k].copy_(self._place(img, j, rb, size))
                continue
            arr, label, skip, err = host_ds.sample(rb.epoch, rb.indices[j])
            self.skips.add(skip)
            if err is not None:
                raise DataError(err)
            host.append((k, arr))
            labels[k] = label
        for k, arr in host:
            if arr is None:  # validation drops unreadable files
                keep[k] = False
            else:
                out[k].copy_(torch.from_numpy(np.array(arr)).permute(2, 0, 1))
        labels = labels.to(self.device)
        if not all(keep):
            idx = torch.tensor([k for k in range(n) if keep[k]], device=self.device)
            return out.index_select(0, idx), labels.index_select(0, idx)
        return out, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rb in self.loader:
            if rb.skipped:
                self.skips.add(rb.skipped)
            if rb.error is not None:
                raise DataError(rb.error)
            images, labels = self._assemble(rb)
            if len(labels):
                yield images, labels
