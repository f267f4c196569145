"""Sort the flat ILSVRC2012 validation folder into one folder per class (wnid).

The 50,000 validation images ship flat (``ILSVRC2012_val_00000001.JPEG`` ...); ImageFolder
needs ``val/<wnid>/<image>``. Ground truth comes in either common form:

- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString``, the prediction string
  starting with the wnid (``n01751748 12 34 56 78 ...``);
- a text file with one wnid per line, line i for ``ILSVRC2012_val_<i, 8 digits>``.

Planning (:func:`plan_valprep`) is pure and checks everything before a file is touched:
every listed image exists (flat, or already in its class folder), every image in the folder
is listed, nothing sits in a wrong class folder. Applying never overwrites; a second run
finds nothing to do and says so. ``--link`` hard-links instead of moving (the flat files
stay, e.g. on a read-only source copy).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, DataError
from ..folder import is_image_file

WNID = re.compile(r"^n\d{8}$")
VAL_NAME = "ILSVRC2012_val_{:08d}"


@dataclass(frozen=True)
class Move:
    """One image to place: ``src`` (flat name) to ``dst`` (``<wnid>/<name>``), relative."""

    src: str
    dst: str


@dataclass(frozen=True)
class Report:
    planned: int  # moves (or links) the plan holds
    in_place: int  # images already in their class folder
    classes: int  # class folders the labels name
    applied: bool  # False for a dry run


def parse_labels(text: str, name: str = "labels") -> dict[str, str]:
    """Image id (file name without extension) -> wnid, from either ground-truth format."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"labels file {name} is empty: pass LOC_val_solution.csv or a wnid list")
    if lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        out: dict[str, str] = {}
        for row in csv.DictReader(io.StringIO("\n".join(lines))):
            fields = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            image, pred = fields.get("imageid", ""), fields.get("predictionstring", "")
            wnid = pred.split()[0] if pred else ""
            if not image or not WNID.match(wnid):
                raise ConfigError(
                    f"labels file {name}: row {row!r} has no ImageId or no wnid first in "
                    "PredictionString: pass an unmodified LOC_val_solution.csv"
                )
            if out.get(image, wnid) != wnid:
                raise ConfigError(f"labels file {name} gives {image} two classes: fix the file")
            out[image] = wnid
        return out
    bad = next((ln for ln in lines if not WNID.match(ln)), None)
    if bad is not None:
        hint = (
            " (numeric class ids, as in the devkit's ground-truth file, need its meta.mat: "
            "use LOC_val_solution.csv or a wnid-per-line file)"
            if bad.isdigit()
            else ""
        )
        raise ConfigError(
            f"labels file {name}: line {bad!r} is not a wnid like n01440764{hint}: pass "
            "LOC_val_solution.csv or a file with one wnid per line in image order"
        )
    return {VAL_NAME.format(i): wnid for i, wnid in enumerate(lines, start=1)}


def _preview(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def plan_valprep(files: Iterable[str], labels: Mapping[str, str]) -> list[Move]:
    """Moves that sort ``files`` (paths relative to the val folder, ``/``-separated) by class.

    ``files`` lists images only: flat ``name.ext`` or already placed ``<wnid>/name.ext``.
    Raises DataError, before anything moves, for a listed image that is missing, an image
    that is not listed, or an image in another class's folder.
    """
    flat: dict[str, str] = {}
    placed: dict[str, str] = {}  # image id -> folder it sits in
    for rel in files:
        parts = rel.split("/")
        stem = os.path.splitext(parts[-1])[0]
        if len(parts) == 1:
            flat[stem] = parts[0]
        elif len(parts) == 2:
            placed[stem] = parts[0]
        else:
            raise DataError(
                f"unexpected nested image {rel}: the val folder must be flat "
                "or <wnid>/<image>; move it out"
            )
    wrong = {s for s, d in placed.items() if s in labels and labels[s] != d}
    if wrong:
        raise DataError(
            f"{len(wrong)} images sit in another class's folder than the labels say "
            f"({_preview(f'{placed[s]}/{s}' for s in wrong)}): check the labels file"
        )
    unlisted = (set(flat) | set(placed)) - set(labels)
    if unlisted:
        raise DataError(
            f"{len(unlisted)} images in the val folder are not in the labels file "
            f"({_preview(unlisted)}): use the labels file of this image set"
        )
    missing = [s for s in labels if s not in flat and s not in placed]
    if missing:
        raise DataError(
            f"{len(missing)} listed images are missing from the val folder "
            f"({_preview(missing)}): copy the complete validation set first"
        )
    return [Move(flat[s], f"{labels[s]}/{flat[s]}") for s in sorted(labels) if s not in placed]


def scan_val_dir(val_dir: Path) -> list[str]:
    """Images in ``val_dir``: flat ones and those one folder deep, as relative paths."""
    out: list[str] = []
    with os.scandir(val_dir) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                with os.scandir(e.path) as sub:
                    out.extend(
                        f"{e.name}/{s.name}" for s in sub if s.is_file() and is_image_file(s.name)
                    )
            elif e.is_file() and is_image_file(e.name):
                out.append(e.name)
    return out


def _place(src: Path, dst: Path, link: bool) -> None:
    # Hard link first: it fails instead of overwriting an existing destination. A move
    # then drops the source; without hard-link support, rename after an existence check.
    try:
        os.link(src, dst)
    except FileExistsError:
        raise DataError(f"{dst} already exists: valprep never overwrites; remove it") from None
    except OSError:
        if link:
            raise
        if dst.exists():
            raise DataError(f"{dst} already exists: valprep never overwrites; remove it") from None
        os.rename(src, dst)
        return
    if not link:
        os.unlink(src)


def valprep(
    val_dir: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    link: bool = False,
) -> Report:
    """Plan, then (unless ``dry_run``) apply the sorting of ``val_dir``."""
    root = Path(val_dir)
    if not root.is_dir():
        raise DataError(
            f"validation folder {root} does not exist: pass the flat ILSVRC2012 val folder"
        )
    try:
        text = Path(labels_file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            f"cannot read --labels {labels_file} ({exc.strerror}): pass an existing file"
        ) from None
    labels = parse_labels(text, str(labels_file))
    moves = plan_valprep(scan_val_dir(root), labels)
    classes = len(set(labels.values()))
    report = Report(len(moves), len(labels) - len(moves), classes, not dry_run)
    if dry_run:
        return report
    for wnid in sorted({m.dst.split("/")[0] for m in moves}):
        (root / wnid).mkdir(exist_ok=True)
    for m in moves:
        _place(root / m.src, root / m.dst, link)
    return report


def describe(report: Report, link: bool) -> str:
    verb = "link" if link else "move"
    if report.planned == 0:
        return (
            f"nothing to do: all {report.in_place} images are already in their "
            f"{report.classes} class folders"
        )
    done = f"{verb}d" if report.applied else f"would {verb}"
    return (
        f"{done} {report.planned} images into {report.classes} class folders "
        f"({report.in_place} already in place)"
    )
