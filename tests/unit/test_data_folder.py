"""ImageFolder validation: every malformed layout is one DataError (exit 3) naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shufflenet_trainer.data.build import LoaderSettings, build_loaders
from shufflenet_trainer.errors import EXIT_DATA, ConfigError, DataError


def _img(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _tree(root: Path, classes: dict[str, int], splits: tuple[str, ...] = ("train", "val")) -> Path:
    for split in splits:
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _img(root / split / name / f"{i}.png", seed=i)
    return root


def _build(root: Path, **kw):
    return build_loaders(
        LoaderSettings(str(root), batch_size=2, workers=0, image_size=16, val_resize=20, **kw)
    )


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as e:
        _build(tmp_path / "nope")
    assert e.value.exit_code == EXIT_DATA


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split(tmp_path: Path, split: str) -> None:
    other = "val" if split == "train" else "train"
    _tree(tmp_path, {"a": 2}, splits=(other,))
    with pytest.raises(DataError, match=f"no {split}/ folder"):
        _build(tmp_path)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _build(tmp_path)


def test_empty_class_is_named(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 2, "b": 2})
    for f in (tmp_path / "train" / "b").iterdir():
        f.unlink()
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"train/b holds no images"):
        _build(tmp_path)


def test_class_sets_differ(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 2, "b": 2})
    _tree(tmp_path, {"c": 1}, splits=("val",))
    with pytest.raises(DataError, match="only in val: c") as e:
        _build(tmp_path)
    assert "\n" not in str(e.value)


def test_good_tree(tmp_path: Path) -> None:
    _tree(tmp_path, {"b": 3, "a": 2})
    loaders = _build(tmp_path)
    assert loaders.class_names == ["a", "b"]
    assert (loaders.num_classes, loaders.train_size, loaders.val_size) == (2, 5, 5)
    x, y = next(iter(loaders.train))
    assert x.shape == (2, 3, 16, 16) and x.dtype.is_floating_point is False
    assert y.dtype.is_floating_point is False


@pytest.mark.parametrize(
    "kw",
    [{"batch_size": 0}, {"val_resize": 8}, {"rank": 2, "world_size": 2}, {"batch_size": 99}],
)
def test_bad_config(tmp_path: Path, kw: dict) -> None:
    _tree(tmp_path, {"a": 2})
    args = {"batch_size": 2, "workers": 0, "image_size": 16, "val_resize": 20} | kw
    with pytest.raises(ConfigError):
        build_loaders(LoaderSettings(str(tmp_path), **args))
