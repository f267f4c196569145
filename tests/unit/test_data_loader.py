"""Loader semantics: skipping vs strict, determinism across workers, sharding, dummy data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet_trainer.data.build import LoaderSettings, build_loaders, normalize_on_device
from shufflenet_trainer.data.loader import ShardedBatchSampler
from shufflenet_trainer.errors import DataError


def _tree(root: Path, n_per_class: int = 6, classes: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n_per_class):
                arr = rng.integers(0, 256, (36 + i, 48, 3), dtype=np.uint8)
                fmt = "JPEG" if i % 2 else "PNG"
                Image.fromarray(arr).save(d / f"{i}.{fmt.lower()}", fmt)
    return root


def _corrupt(root: Path) -> list[Path]:
    bad = root / "train" / "c1" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    jpg = root / "train" / "c2" / "1.jpeg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated inside the entropy-coded data
    vbad = root / "val" / "c0" / "3.jpeg"
    vbad.write_bytes(b"")
    return [bad, jpg, vbad]


def _load(root: Path, **kw):
    args = {"batch_size": 4, "workers": 0, "image_size": 24, "val_resize": 28} | kw
    return build_loaders(LoaderSettings(str(root), **args))


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_corrupt_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _corrupt(_tree(tmp_path))
    loaders = _load(tmp_path, drop_last=False)
    with caplog.at_level(logging.WARNING, logger="shufflenet_trainer.data"):
        train = _epoch(loaders.train)
        val = _epoch(loaders.val)
    # Training substitutes, so every batch keeps its size; validation drops the bad file.
    assert sum(len(y) for _, y in train) == loaders.train_size
    assert sum(len(y) for _, y in val) == loaders.val_size - 1
    assert loaders.stats.skipped_files == 3
    for p in bad:
        assert str(p) in caplog.text
    # A second epoch meets the same files again but counts distinct files.
    loaders.set_epoch(1)
    _epoch(loaders.train)
    assert loaders.stats.skipped_files == 3


def test_strict_names_the_file(tmp_path: Path) -> None:
    bad = _corrupt(_tree(tmp_path))
    loaders = _load(tmp_path, strict=True)
    with pytest.raises(DataError) as e:
        _epoch(loaders.val)
    assert str(bad[2]) in str(e.value) and "\n" not in str(e.value)


def test_strict_error_from_worker_is_one_line(tmp_path: Path) -> None:
    _corrupt(_tree(tmp_path))
    loaders = _load(tmp_path, strict=True, workers=1)
    with pytest.raises(DataError, match="unreadable image") as e:
        _epoch(loaders.train)
    assert "\n" not in str(e.value)


def test_same_batches_for_any_worker_count(tmp_path: Path) -> None:
    _corrupt(_tree(tmp_path))
    runs = []
    for workers in (0, 2):
        loaders = _load(tmp_path, workers=workers, seed=7)
        loaders.set_epoch(3)
        runs.append(_epoch(loaders.train))
    assert len(runs[0]) == len(runs[1]) == 4
    for (x0, y0), (x1, y1) in zip(*runs, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_resume_sees_same_epoch(tmp_path: Path) -> None:
    _tree(tmp_path)
    a = _load(tmp_path, seed=3)
    a.set_epoch(0)
    e0 = _epoch(a.train)
    a.set_epoch(1)
    e1 = _epoch(a.train)
    b = _load(tmp_path, seed=3)  # a fresh process resuming at epoch 1
    b.set_epoch(1)
    e1b = _epoch(b.train)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e1, e1b, strict=True))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(e0, e1, strict=True))
    c = _load(tmp_path, seed=4)
    c.set_epoch(1)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(e1, _epoch(c.train), strict=True))


def test_channels_last_same_pixels(tmp_path: Path) -> None:
    _tree(tmp_path)
    x0, _ = next(iter(_load(tmp_path).train))
    x1, _ = next(iter(_load(tmp_path, channels_last=True).train))
    assert x0.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x0, x1)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_shards(world: int) -> None:
    n, bs = 23, 3
    train = [
        ShardedBatchSampler(n, bs, shuffle=True, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    seen = [i for s in train for _, b in s for i in b]
    assert len(seen) == len(set(seen)) == sum(len(s) for s in train) * bs
    assert all(len(b) == bs for s in train for _, b in s)
    val = [
        ShardedBatchSampler(n, bs, shuffle=False, rank=r, world_size=world, drop_last=False)
        for r in range(world)
    ]
    vseen = sorted(i for s in val for _, b in s for i in b)
    assert vseen == list(range(n))
    assert sum(len(s) for s in val) == sum(-(-len(range(r, n, world)) // bs) for r in range(world))


def test_sampler_matches_distributed_sampler() -> None:
    from torch.utils.data import DistributedSampler

    ds = list(range(29))
    for rank in range(2):
        ref = DistributedSampler(
            ds, num_replicas=2, rank=rank, shuffle=True, seed=9, drop_last=True
        )
        ref.set_epoch(4)
        ours = ShardedBatchSampler(29, 1, shuffle=True, seed=9, rank=rank, world_size=2)
        ours.set_epoch(4)
        assert ours.shard() == list(ref)


def test_dummy_is_deterministic() -> None:
    settings = LoaderSettings(
        None, batch_size=4, workers=0, dummy=True, dummy_size=20, dummy_classes=5, image_size=8
    )
    a, b = build_loaders(settings), build_loaders(settings)
    assert a.stats.decode_path == "synthetic" and a.num_classes == 5 and a.val_size == 2
    for (xa, ya), (xb, yb) in zip(a.train, b.train, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.dtype == torch.uint8 and int(ya.max()) < 5


def test_normalize_matches_reference() -> None:
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = (x.float() / 255 - mean) / std
    out = normalize_on_device(x, torch.device("cpu"), channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    half = normalize_on_device(x, torch.device("cpu"), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=2e-2, rtol=1e-2)
