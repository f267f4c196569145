"""The nvJPEG path against the host path (runs only where CUDA is available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import write_photo_jpegs
from PIL import Image

from shufflenet_trainer.data.build import LoaderSettings, build_loaders, normalize_on_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# nvJPEG's IDCT and chroma upsampling and the float GPU resampler round differently from
# libjpeg-turbo and torch's uint8 CPU resampler.
MEAN_DIFF = 2.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("gpu")
    photos = write_photo_jpegs(base / "src", 16)
    for split in ("train", "val"):
        for c in range(2):
            d = base / "data" / split / f"n{c}"
            d.mkdir(parents=True)
            for p in photos[c * 7 : c * 7 + 7]:
                (d / p.name).write_bytes(p.read_bytes())
        with Image.open(photos[14]) as im:
            im.convert("CMYK").save(base / "data" / split / "n0" / "cmyk.jpg")
            im.save(base / "data" / split / "n1" / "plain.png")
        cut = base / "data" / split / "n1" / "cut.jpg"
        cut.write_bytes(photos[15].read_bytes()[:2000])
    return base / "data"


def _run(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in loader]


@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_matches_host(root: Path, split: str, capsys) -> None:
    kw = {"batch_size": 4, "workers": 0, "drop_last": False, "seed": 3}
    host = build_loaders(LoaderSettings(str(root), decoder="tv-jpeg", **kw))
    gpu = build_loaders(LoaderSettings(str(root), device="cuda", channels_last=True, **kw))
    assert gpu.stats.decode_path == "gpu-nvjpeg"
    host.set_epoch(2)
    gpu.set_epoch(2)
    a, b = _run(getattr(host, split)), _run(getattr(gpu, split))
    assert len(a) == len(b)
    diffs = []
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
        assert xb.dtype == torch.uint8 and xb.shape == xa.shape
        diffs.append((xa.float() - xb.float()).abs().mean(dim=(1, 2, 3)))
    d = torch.cat(diffs)
    with capsys.disabled():
        print(
            f"\n{split}: gpu vs host mean |diff| per image: max {d.max():.3f}, avg {d.mean():.3f}"
        )
    assert float(d.max()) < MEAN_DIFF
    assert gpu.stats.skipped_files == host.stats.skipped_files == 1


def test_gpu_workers_deterministic_and_layout(root: Path) -> None:
    kw = {"batch_size": 4, "drop_last": True, "device": "cuda", "channels_last": True}
    a = build_loaders(LoaderSettings(str(root), workers=0, **kw))
    b = build_loaders(LoaderSettings(str(root), workers=2, **kw))
    for (xa, ya), (xb, yb) in zip(a.train, b.train, strict=True):
        assert xa.is_cuda and xa.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    z = normalize_on_device(xa, torch.device("cuda"), torch.bfloat16, channels_last=True)
    assert z.dtype == torch.bfloat16 and z.is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite(z.float().cpu().numpy()).all()
