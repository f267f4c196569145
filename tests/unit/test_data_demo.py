"""The digits ImageFolder writer: real data, deterministic split, idempotent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from shufflenet_trainer.data.prep import demo_data
from shufflenet_trainer.data.prep.demo_data import MARKER, write_digits_imagefolder
from shufflenet_trainer.errors import DataError


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_writes_stratified_split(tmp_path: Path) -> None:
    out = write_digits_imagefolder(tmp_path / "d", size=16, val_fraction=0.25)
    files = _listing(out)
    assert len(files) == 1797
    for c in range(10):
        n_train = len(list((out / "train" / str(c)).glob("*.png")))
        n_val = len(list((out / "val" / str(c)).glob("*.png")))
        assert abs(n_val - 0.25 * (n_train + n_val)) <= 0.5
    with Image.open(next((out / "val" / "3").glob("*.png"))) as im:
        assert im.mode == "RGB" and im.size == (16, 16)


def test_idempotent_and_deterministic(tmp_path: Path) -> None:
    out = write_digits_imagefolder(tmp_path / "d", size=12)
    first = {p: os.stat(out / p).st_mtime_ns for p in _listing(out)}
    again = write_digits_imagefolder(tmp_path / "d", size=12)
    assert {p: os.stat(again / p).st_mtime_ns for p in _listing(again)} == first
    other = write_digits_imagefolder(tmp_path / "e", size=12)
    assert _listing(other) == sorted(first)
    assert (out / "train" / "0" / _listing(out / "train" / "0")[0]).read_bytes() == (
        other / "train" / "0" / _listing(other / "train" / "0")[0]
    ).read_bytes()
    # Other parameters replace the dataset; no temporary folders are left behind.
    write_digits_imagefolder(tmp_path / "d", size=10)
    with Image.open(next((out / "train" / "1").glob("*.png"))) as im:
        assert im.size == (10, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e"]


def test_incomplete_is_rewritten_and_foreign_refused(tmp_path: Path) -> None:
    out = write_digits_imagefolder(tmp_path / "d", size=9)
    (out / MARKER).write_text("{}")  # an interrupted or foreign-parameter copy
    write_digits_imagefolder(out, size=9)
    assert len(_listing(out)) == 1797
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty"):
        write_digits_imagefolder(foreign)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_data.main([str(tmp_path / "d"), "--size", "8"]) == 0
    assert "10 classes" in capsys.readouterr().out
    assert demo_data.main([str(tmp_path / "d"), "--val-fraction", "1.5"]) == 2
