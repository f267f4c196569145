"""The result folder of a run and what is written into it.

Layout, under --output-dir (default `result`; a job's is its run folder on the checkpoint
volume, `<spec.checkpoint.path>/<namespace>/<name>`: shufflenet_contract.job.run_dir):

    training_<N>p_job_<YYYYmmddHHMMSS>[_<k>]/
        config.json          the resolved configuration
        train.log            the human log of rank 0 (what the console shows, as plain lines)
        rank<k>.log          the log of rank k > 0 of a multi-rank job
        train.jsonl          one JSON object per print step, per epoch and per evaluation
        checkpoint.pth.tar   the latest checkpoint (atomic save each epoch, and on SIGTERM)
        checkpoint.prev.pth.tar  the one before it (the fallback of --resume auto)
        model_best.pth.tar   the checkpoint with the best validation top-1 so far
        curves.png           loss, top-1 and throughput per epoch

N is the world size. A folder is never reused: when the name exists (two runs started in the
same second), a numeric suffix is added. The folder, and --output-dir with any folders
missing above it, is created only once the configuration, device, data and checkpoints have
been validated, so a run that fails validation leaves no trace and never touches an existing
folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from shufflenet_contract.job import RESULT_DIR_PREFIX

from ..console import Progress

CONFIG_NAME = "config.json"
LOG_NAME = "train.log"
JSONL_NAME = "train.jsonl"
CURVES_NAME = "curves.png"


def rank_log_name(rank: int) -> str:
    """The log file of a rank other than 0, beside rank 0's train.log."""
    return f"rank{rank}.log"


def result_dir_name(world_size: int, now: datetime) -> str:
    return f"{RESULT_DIR_PREFIX}{world_size}p_job_{now:%Y%m%d%H%M%S}"


def create_result_dir(
    output_dir: str | os.PathLike[str], world_size: int, now: datetime | None = None
) -> Path:
    """Create a fresh result folder; mkdir without exist_ok makes the choice race-free."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = result_dir_name(world_size, now or datetime.now())
    for k in range(10_000):
        folder = root / (base if k == 0 else f"{base}_{k}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"no free result folder name under {root} for {base}")


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss is written as null rather than breaking readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class RunLog:
    """Human lines to the console and train.log, records to train.jsonl.

    Lines logged before the folder exists (device, dataset summary) are kept and written
    to train.log once `attach` is called, so the log is complete.
    """

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress or Progress()
        self.folder: Path | None = None
        self._pending: list[str] = []
        self._log: TextIO | None = None
        self._jsonl: TextIO | None = None

    def attach(self, folder: Path, *, log_name: str = LOG_NAME, records: bool = True) -> None:
        """Start writing into `folder`: the main log and records (rank 0), or only a rank's
        own log (`log_name`, `records=False`) for the other ranks of a job."""
        self.folder = folder
        self._log = open(folder / log_name, "a", encoding="utf-8")  # noqa: SIM115
        if records:
            self._jsonl = open(folder / JSONL_NAME, "a", encoding="utf-8")  # noqa: SIM115
        for text in self._pending:
            self._log.write(text + "\n")
        self._log.flush()
        self._pending.clear()

    def _to_file(self, text: str) -> None:
        if self._log is None:
            self._pending.append(text)
        else:
            self._log.write(text + "\n")
            self._log.flush()

    def info(self, text: str) -> None:
        """A line for the console and the log."""
        self.progress.line(text)
        self._to_file(text)

    def step(self, text: str, bar_text: str | None = None) -> None:
        """A print-step line: a plain line in the log, `bar_text` beside the bar on a TTY."""
        self.progress.step_line(text, bar_text)
        self._to_file(text)

    def record(self, obj: Mapping[str, Any]) -> None:
        """One JSON object per line, flushed so that a tail -f or a crash sees it."""
        if self._jsonl is None:
            return
        self._jsonl.write(json.dumps(_json_safe(obj), sort_keys=False) + "\n")
        self._jsonl.flush()

    def write_config(self, config: Mapping[str, Any]) -> None:
        if self.folder is None:
            return
        with open(self.folder / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(_json_safe(config), f, indent=2, sort_keys=True)
            f.write("\n")

    def close(self) -> None:
        for f in (self._log, self._jsonl):
            if f is not None:
                f.close()
        self._log = self._jsonl = None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read train.jsonl back (for tests, plots and tools)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
