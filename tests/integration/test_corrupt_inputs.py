"""Corrupt inputs to `shufflenet-train`: checkpoints, rank tables and dataset folders.

Each ends with one `error:` line on stderr and its documented exit code (2 bad configuration,
3 bad data, 134 a rank table still not usable when --dist-timeout runs out; docs/training.md),
before any result folder is made, and leaves the input as it was. The counts are in
docs/reliability.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shufflenet_contract import ranktable

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


def _train(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
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


def _with_link(root: Path, link: str, target: str) -> None:
    """Two classes of one image each (train and val), and a symlink `link` -> `target`."""
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _images(root / split / c, ["1.jpg"], JPEG)
    (root / link).symlink_to(target)


JPEG = b"\xff\xd8\xff"
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
    "a class of non-images only": lambda root: (
        [_images(root / split / "cat", ["1.jpg"], JPEG) for split in ("train", "val")]
        and _images(root / "train" / "dog", ["README.txt", "labels.csv"], b"text")
        and _images(root / "val" / "dog", ["1.jpg"], JPEG)
    ),
    # A link back to the dataset inside a class: followed without end, it read the dataset
    # again at every level (a second loop beside it doubles that at every level).
    "a symlink loop inside a class": lambda root: _with_link(root, "train/cat/again", "../.."),
    "a class folder that is a looping link": lambda root: (
        _with_link(root, "train/bird", "bird") or (root / "val" / "bird").mkdir()
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


def _table(pods: int = 1, server_id: str = "uid-0") -> str:
    """A completed rank table of `pods` one-chip pods, as the operator writes it."""
    return ranktable.dump(
        ranktable.build_rank_table(
            ranktable.PodDevices(
                rank, server_id if rank == 0 else f"uid-{rank}",
                (ranktable.Device("0", f"192.168.100.{101 + rank}"),),
            )
            for rank in range(pods)
        )
    )  # fmt: skip


def _configmap(folder: Path, text: str, attempt: int = 1) -> Path:
    """The table delivered as a ConfigMap volume (symlinks into `..data`), as pods see it."""
    ranktable.publish(folder, ranktable.configmap_data(text, version=1, attempt=attempt))
    return folder / ranktable.FILE_KEY


def _plain(folder: Path, data: bytes) -> Path:
    folder.mkdir()
    (folder / ranktable.FILE_KEY).write_bytes(data)
    return folder / ranktable.FILE_KEY


# (how the table is corrupt) -> (the RANK_TABLE_FILE, the exit code, what the line says).
# A table that waiting could still fix (a ConfigMap being updated, a kubelet not synced yet)
# is waited for up to --dist-timeout, then exit 134 (retryable); one of this attempt that is
# wrong is exit 2 at once.
RANK_TABLES: dict[str, Callable[[Path], tuple[Path, int, str]]] = {
    "truncated JSON": lambda d: (_configmap(d, _table()[:60]), 134, "not JSON"),
    "not UTF-8": lambda d: (_plain(d, b"\xff\xfe" + _table().encode()[:40]), 134, "not JSON"),
    "still initializing": lambda d: (
        _configmap(d, ranktable.dump(ranktable.initializing_table())),
        134,
        "initializing",
    ),
    "two ranks for a world of one": lambda d: (_configmap(d, _table(pods=2)), 2, "rank"),
    "another attempt's table": lambda d: (_configmap(d, _table(), attempt=0), 134, "attempt 0"),
    "without this pod": lambda d: (_configmap(d, _table(server_id="uid-other")), 134, "other pods"),
    "a directory": lambda d: (d / "hccl.json", 134, "unreadable"),
}
# Rank 0 of a one-rank job, in its pod of attempt 1 (the tables above are of attempt 1 but
# for the stale one).
RANK_ENV = {"RANK": "0", "WORLD_SIZE": "1", "POD_UID": "uid-0", "SHUFFLENET_ATTEMPT": "1"}


def _tree(root: Path) -> list[tuple[str, bytes]]:
    return sorted(
        (str(p), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*") if p.exists()
    )


@pytest.mark.parametrize("kind", sorted(RANK_TABLES))
def test_a_corrupt_rank_table_is_one_line_with_its_code_and_left_alone(
    tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "ranktable"
    if kind == "a directory":
        (folder / "hccl.json").mkdir(parents=True)
    path, code, says = RANK_TABLES[kind](folder)
    before = _tree(folder)
    out = tmp_path / "out"
    env = {
        **RANK_ENV,
        "RANK_TABLE_FILE": str(path),
        "SHUFFLENET_RANK_TABLE_DIR": str(tmp_path / "copies"),
    }
    proc = _train("--dummy", *SMALL, "--dist-timeout", "1", "--output-dir", out, env=env)
    line = _one_error_line(proc, code)
    assert str(path) in line and says in line, line
    assert _tree(folder) == before
    assert not out.exists() and not (tmp_path / "copies").exists()
