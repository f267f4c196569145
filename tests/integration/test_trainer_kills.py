"""`shufflenet-train` under SIGKILL: a short run of the kill loop (soak/trainer_kills.py), and
the cases it found, pinned.

The full loop (`make soak`, 200 kills) and its figures are in docs/reliability.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from soak import trainer_kills as tk

from shufflenet_trainer.train.results import read_jsonl

pytestmark = pytest.mark.slow


def _train(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", *tk.FLAGS, "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_checkpoint_steps_saves_inside_epochs_and_a_finished_run_restarts_as_done(
    tmp_path: Path,
) -> None:
    first = _train(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (folder,) = tmp_path.glob("training_*")
    saved = [
        (r["kind"], r["global_step"])
        for r in read_jsonl(folder / "train.jsonl")
        if "checkpoint_seconds" in r
    ]
    every, steps = tk.CHECKPOINT_STEPS, tk.STEPS
    expected = [
        ("epoch" if s % steps == 0 else "checkpoint", s)
        for s in range(every, tk.EPOCHS * steps + 1, every)
    ]
    assert saved == expected
    # A rank killed after its last checkpoint (while plotting, exiting) is restarted with
    # the same flags: the job is done, not misconfigured (exit 2 would fail it for good).
    again = _train(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing left to train" in again.stdout
    assert list(tmp_path.glob("training_*")) == [folder]


def test_ten_kills_leave_a_resumable_checkpoint_and_lose_at_most_the_steps_since_it(
    tmp_path: Path,
) -> None:
    summary = tk.run_kills(10, seed=2, workdir=tmp_path)
    assert not summary.violations, summary.violations
    assert len(summary.kills) == 10
    assert summary.mid_write >= 1, summary.details()
    assert max(summary.lost(), default=0) <= tk.CHECKPOINT_STEPS, summary.details()
