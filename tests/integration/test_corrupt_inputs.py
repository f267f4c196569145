"""Corrupt inputs to `shufflenet-train`: checkpoints and dataset folders.

Each ends with one `error:` line on stderr and its documented exit code (2 bad configuration,
3 bad data; docs/training.md), before any result folder is made, and leaves the input as it
was. The counts are in docs/reliability.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SMALL = ["-a", "shufflenet_v2_x0_5", "--image-size", "32", "--val-resize", "32", "-j", "0"]
SMALL += ["--metrics-port", "0", "--epochs", "1", "--max-steps-per-epoch", "1", "-b", "4"]


def _checkpoint(tmp: Path) -> bytes:
    path = tmp / "real.pth.tar"
    torch.save({"format": 1, "epoch": 0, "arch": "shufflenet_v2_x0_5", "state_dict": {}}, path)
    return path.read_bytes()


CHECKPOINTS: dict[str, Callable[[Path], bytes]] = {
    "random bytes": lambda tmp: os.urandom(4096),
    "empty": lambda tmp: b"",
    "truncated": lambda tmp: _checkpoint(tmp)[:200],
    "json text": lambda tmp: b'{"epoch": 3}',
    "flipped bytes": lambda tmp: bytes(
        b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(_checkpoint(tmp))
    ),
}


def _train(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_a_corrupt_checkpoint_is_one_line_exit_2_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(CHECKPOINTS[kind](tmp_path))
    before = path.read_bytes()
    out = tmp_path / "out"
    line = _one_error_line(_train("--dummy", *SMALL, "--resume", path, "--output-dir", out), 2)
    assert str(path) in line
    assert path.read_bytes() == before
    assert not any(out.glob("training_*"))


def _images(folder: Path, names: list[str], data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)


DATASETS: dict[str, Callable[[Path], None]] = {
    "empty folder": lambda root: root.mkdir(),
    "no class folders": lambda root: _images(root / "train", ["a.jpg"], b"x"),
    "an empty class": lambda root: (
        [_images(root / split / "cat", ["1.jpg"], b"\xff\xd8\xff") for split in ("train", "val")]
        and (root / "train" / "dog").mkdir()
    ),
    "only corrupt images": lambda root: (
        [
            _images(root / split / c, ["1.jpg", "2.jpg"], b"\xff\xd8\xffnot a jpeg")
            for split in ("train", "val")
            for c in ("cat", "dog")
        ]
        and None
    ),
}


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_a_corrupt_dataset_folder_is_one_line_exit_3_and_left_alone(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "data"
    DATASETS[kind](root)
    before = sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*"))
    out = tmp_path / "out"
    _one_error_line(_train(root, *SMALL, "--strict-data", "--output-dir", out), 3)
    assert (
        sorted((str(p), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*")) == before
    )
    # Image contents are read only when a batch needs them, so a run over undecodable images
    # has made its result folder by then (its log says what happened); the layout is
    # checked before.
    assert kind == "only corrupt images" or not any(out.glob("training_*"))
