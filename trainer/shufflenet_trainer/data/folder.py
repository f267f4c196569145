"""ImageFolder layout: ``ROOT/{train,val}/<class>/<image>``, scanned with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

# Same set of extensions torchvision's ImageFolder accepts, so a tree that works with
# pytorch/examples works here too.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:  # a link to itself or in a ring: ELOOP
        raise DataError(
            f"{entry.path}: {exc.strerror}: remove the link or point it at a folder"
        ) from None


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split; hidden folders are ignored."""
    with os.scandir(split_dir) as it:
        names = sorted(e.name for e in it if _is_dir(e) and not e.name.startswith("."))
    if not names:
        raise DataError(
            f"no class folders in {split_dir}: expected {split_dir}/<class>/<image>, "
            "one folder per class"
        )
    return names


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image, in class then file-name order (deterministic)."""
    samples: list[tuple[str, int]] = []
    for idx, name in enumerate(classes):
        class_dir = split_dir / name
        files: list[str] = []
        seen: dict[str, str] = {}
        # os.walk follows the torchvision convention of allowing nested folders per class,
        # links to folders included; a folder reached twice (a link back up the tree) would
        # be walked again without end, each time adding its images again.
        for root, dirs, fnames in os.walk(class_dir, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                raise DataError(
                    f"{root} leads to {real}, which {seen[real]} already is (a symlink loop or "
                    "a second link to one folder): remove the link"
                )
            seen[real] = root
            dirs.sort()
            files.extend(os.path.join(root, f) for f in sorted(fnames) if is_image_file(f))
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no images ({', '.join(IMG_EXTENSIONS)}): "
                "add images or remove the folder"
            )
        samples.extend((f, idx) for f in files)
    return samples


def scan_imagefolder(
    data_dir: str | os.PathLike[str],
) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Validate ``data_dir`` and return (class names, train samples, val samples)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist: pass the folder that holds train/ and val/"
        )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root} has no {split}/ folder: expected {root}/train/<class>/* and "
                f"{root}/val/<class>/* (run `snjob valprep` for a flat ImageNet val folder)"
            )
    train_classes = find_classes(root / "train")
    val_classes = find_classes(root / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(
            f"train and val class folders differ in {root} (only in train: "
            f"{_preview(only_train)}; only in val: {_preview(only_val)}): "
            "make both splits hold the same class folders"
        )
    train = list_samples(root / "train", train_classes)
    val = list_samples(root / "val", val_classes)
    return train_classes, train, val


def _preview(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
