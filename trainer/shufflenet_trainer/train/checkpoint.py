"""Checkpoints: atomic saves, and loads that say clearly what is wrong with a file.

A save never leaves a half-written checkpoint under the final name: the state is written to
a temporary file in the same folder, fsync'ed, then moved over the old file with os.replace
(atomic on POSIX within one file system). A job killed mid-save restarts from the previous
checkpoint instead of failing on a truncated one.

Loads use `weights_only=True`: a checkpoint holds tensors and plain Python values only, so
nothing in a file can run code on load.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shufflenet_contract.job import RESULT_DIR_GLOB

from ..atomic import atomic_write
from ..errors import ConfigError, first_line

CHECKPOINT_NAME = "checkpoint.pth.tar"
# The checkpoint before the latest: what --resume auto falls back to when the latest is
# unreadable (a disk that lost the last write, a file cut by a full volume).
PREVIOUS_NAME = "checkpoint.prev.pth.tar"
BEST_NAME = "model_best.pth.tar"
FORMAT = "shufflenet-train/1"

# Prefixes that wrappers add to state_dict keys: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(
    state: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    previous: str | os.PathLike[str] | None = None,
) -> Path:
    """Write `state` to `path` atomically; the previous file stays intact on any failure.

    With `previous`, the file at `path` is first moved there (once the new state is safely
    on disk), so that two generations exist; at every moment one of them is complete.
    """
    with atomic_write(path, previous=previous) as tmp, open(tmp, "wb") as f:
        torch.save(dict(state), f)
    return Path(path)


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy a finished checkpoint (e.g. to model_best.pth.tar) with the same guarantee."""
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _read(path: Path, flag: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file; pass the path of an existing checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{flag} {path} is not a readable checkpoint ({first_line(exc, limit=120)}); pass a "
            f"{CHECKPOINT_NAME} written by shufflenet-train or a torchvision state_dict"
        ) from None


def load_checkpoint(path: str | os.PathLike[str], *, arch: str, flag: str = "--resume") -> dict:
    """Load a shufflenet-train checkpoint for resuming, checking it is one and fits `arch`."""
    path = Path(path)
    obj = _read(path, flag)
    if not isinstance(obj, dict) or "state_dict" not in obj or "arch" not in obj:
        raise ConfigError(
            f"{flag} {path} is not a shufflenet-train checkpoint (no arch/state_dict); "
            f"pass a {CHECKPOINT_NAME} from a result folder"
        )
    if obj["arch"] != arch:
        raise ConfigError(
            f"{flag} {path} holds a {obj['arch']} checkpoint but -a/--arch is {arch}: "
            f"pass -a {obj['arch']} or a {arch} checkpoint"
        )
    for key in ("optimizer", "epoch"):
        if key not in obj:
            raise ConfigError(
                f"{flag} {path} has no {key!r}: it holds weights only; "
                "use it with --pretrained instead of --resume"
            )
    return obj


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    allow_new_head: bool,
    flag: str = "--pretrained",
) -> str:
    """Load weights from a torchvision-format state_dict or one of our checkpoints.

    With `allow_new_head` (training on a dataset whose class count differs from the weights'),
    a classifier of another shape is left at its fresh initialisation; every other key must
    match in name and shape. Returns a one-line note of what was loaded.
    """
    path = Path(path)
    obj = _read(path, flag)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        if "arch" in obj and obj["arch"] != arch:
            raise ConfigError(
                f"{flag} {path} holds {obj['arch']} weights but -a/--arch is {arch}: "
                f"pass -a {obj['arch']} or {arch} weights"
            )
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{flag} {path} holds no state_dict of tensors; pass a torchvision state_dict "
            f"or a {CHECKPOINT_NAME}"
        )
    incoming = strip_wrapper_prefixes(obj)
    own = model.state_dict()
    missing = sorted(set(own) - set(incoming))
    unexpected = sorted(set(incoming) - set(own))
    if missing or unexpected:
        sample = (missing or unexpected)[0]
        raise ConfigError(
            f"{flag} {path} does not fit {arch} ({len(missing)} missing and {len(unexpected)} "
            f"unexpected keys, e.g. {sample!r}): pass weights of a {arch} model"
        )
    mismatched = [k for k in own if own[k].shape != incoming[k].shape]
    head = {"fc.weight", "fc.bias"}
    skipped: list[str] = []
    if mismatched:
        if allow_new_head and set(mismatched) <= head:
            skipped = sorted(mismatched)
            for k in skipped:
                incoming[k] = own[k]
        else:
            k = mismatched[0]
            raise ConfigError(
                f"{flag} {path} does not fit {arch}: {k} has shape "
                f"{tuple(incoming[k].shape)}, the model {tuple(own[k].shape)}; pass weights of "
                f"a {arch} model with {own['fc.weight'].shape[0]} classes"
            )
    model.load_state_dict(incoming)
    if skipped:
        return f"loaded {path}; classifier {skipped} kept fresh (class count differs)"
    return f"loaded {path}"


def checkpoint_candidates(output_dir: str | os.PathLike[str], *, own: bool = False) -> list[Path]:
    """Every checkpoint (latest and previous) of the result folders under `output_dir`,
    newest first (for --resume auto); with `own`, also those of `output_dir` itself, for a
    result folder given as it is (--init-from)."""
    root = Path(output_dir)
    names = (CHECKPOINT_NAME, PREVIOUS_NAME)
    patterns = [f"{RESULT_DIR_GLOB}/{name}" for name in names] + (list(names) if own else [])
    found = [p for pattern in patterns for p in root.glob(pattern) if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


# The flag a user changes to point a search at other runs.
_SEARCH_FOLDER_FLAG = {"--resume auto": "--output-dir", "--init-from": "--init-from"}


def find_resumable(
    output_dir: str | os.PathLike[str],
    *,
    arch: str,
    flag: str = "--resume auto",
    own: bool = False,
) -> tuple[Path | None, dict | None, list[str]]:
    """The newest checkpoint under `output_dir` that loads, with its state and notes on the
    newer ones that did not (unreadable or incomplete files are skipped, not fatal: the
    previous generation is what they are kept for). A readable checkpoint of another arch
    is an error naming `flag`, not something to skip past. `own`: as checkpoint_candidates."""
    notes: list[str] = []
    for path in checkpoint_candidates(output_dir, own=own):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            notes.append(f"{path} is unreadable ({first_line(exc, limit=120)})")
            continue
        if not isinstance(obj, dict) or not {"state_dict", "arch", "optimizer", "epoch"} <= set(
            obj
        ):
            notes.append(f"{path} is not a complete shufflenet-train checkpoint")
            continue
        if obj["arch"] != arch:
            raise ConfigError(
                f"{flag}: {path} holds a {obj['arch']} checkpoint but -a/--arch is "
                f"{arch}: pass -a {obj['arch']}, or another {_SEARCH_FOLDER_FLAG[flag]}"
            )
        return path, obj, notes
    return None, None, notes


def find_init(path: str | os.PathLike[str], *, arch: str) -> tuple[Path, list[str]]:
    """The checkpoint `--init-from PATH` names, with notes on newer ones skipped: PATH itself
    when it is a file; else the newest usable checkpoint of the result folder PATH or of the
    result folders under PATH (a job's run folder), found as --resume auto finds them.

    A missing PATH, or a folder without a usable checkpoint, is a ConfigError: a job asked
    to start from another run must not quietly start from scratch.
    """
    where = Path(path)
    if where.is_file():
        return where, []
    if not where.is_dir():
        raise ConfigError(
            f"--init-from {where} (spec.checkpoint.initFrom): no such file or folder; pass a "
            "checkpoint file, a result folder or a job's run folder"
        )
    found, _, notes = find_resumable(where, arch=arch, flag="--init-from", own=True)
    if found is None:
        skipped = f" ({len(notes)} unusable)" if notes else ""
        raise ConfigError(
            f"--init-from {where} (spec.checkpoint.initFrom): no checkpoint{skipped} in it or "
            f"in its {RESULT_DIR_GLOB} folders; pass a folder of a run that has saved one"
        )
    return found, notes


def torchvision_weights_file(arch: str, hub_dir: str | os.PathLike[str] | None = None) -> Path:
    """The torch hub cache file of torchvision's ImageNet weights for `arch` (--pretrained).

    Only the cache is read, never the network: clusters are often offline, and a download by
    every rank at once is what a pre-seeded cache avoids. A missing file is a one-line
    ConfigError naming where to put it and where it comes from.
    """
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    folder = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(weights.url)
    if not path.is_file():
        raise ConfigError(
            f"--pretrained: torchvision's {weights} weights are not in the torch hub cache: "
            f"put {weights.url} at {path} (or set $TORCH_HOME), or pass --weights PATH"
        )
    return path
