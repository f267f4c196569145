"""`shufflenet-train` killed with SIGKILL at random moments and resumed with `--resume auto`.

A small real run (CPU, ShuffleNetV2 x0.5, 32-pixel synthetic images, a checkpoint every
CHECKPOINT_STEPS steps) goes into one output folder; a seeded driver kills it at a random
moment, a good share of the kills while a checkpoint is being written (the atomic writer's
temporary file `.<name>.tmp-<pid>` is polled for and the kill comes while it exists), then
starts it again with the same command line. Each run that finishes starts a fresh output
folder (a "campaign"); after the last kill the current campaign runs to its end unkilled.

What is checked comes from the files, with the trainer's log cross-checked against them:

* after every kill, each checkpoint under its final name (checkpoint.pth.tar,
  checkpoint.prev.pth.tar) loads here, with `torch.load(weights_only=True)`, and is complete;
  the highest `global_step` among them is the last completed checkpoint, and a checkpoint the
  killed run's train.jsonl says it saved is never beyond it;
* the next run resumes (never fails on a partial file, never starts fresh when a checkpoint
  exists) at a global step no earlier than that last completed checkpoint: read from its
  "=> resumed from PATH at epoch E, step S" line, which must agree with PATH's own
  `global_step` and with the first step the run then logs;
* a run that finishes ends with the last epoch in its checkpoint, and with the same weights
  as a run of the same flags that was never killed.

It prints `trainer kills: K kills (W during checkpoint writes), V violations`, then the
figures and each violation, and exits 1 when V > 0.

    PYTHONPATH=tests .venv/bin/python -m soak.trainer_kills --kills 200 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shufflenet_contract.job import RESULT_DIR_GLOB
from shufflenet_trainer.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME

EPOCHS = 4
STEPS = 6  # --max-steps-per-epoch
CHECKPOINT_STEPS = 2
FLAGS = [
    "--dummy", "-a", "shufflenet_v2_x0_5", "--num-classes", "10", "--image-size", "32",
    "--val-resize", "32", "-j", "0", "-b", "4", "--epochs", str(EPOCHS),
    "--max-steps-per-epoch", str(STEPS), "--checkpoint-steps", str(CHECKPOINT_STEPS),
    "-p", "1", "--metrics-port", "0", "--resume", "auto",
]  # fmt: skip
# Where a kill is aimed: while a checkpoint is written, somewhere in training once the run's
# result folder exists, or at any moment from the start (the import of torch included).
MODES = {"write": 0.5, "train": 0.35, "start": 0.15}
POLL_SECONDS = 0.002
RUN_TIMEOUT = 180.0
RESUMED = re.compile(r"=> resumed from (\S+) at epoch (\d+)(?:, step (\d+))?")
FRESH = "=> --resume auto: no usable checkpoint"
FINISHED = "nothing left to train"
END = EPOCHS * STEPS


@dataclass
class Kill:
    mode: str
    mid_write: bool
    saved: int  # global step of the last completed checkpoint on disk after the kill
    progress: int | None  # the last global step the killed run logged (None: none)
    resumed: int | None = None  # where the next run that said so resumed


@dataclass
class Summary:
    kills: list[Kill] = field(default_factory=list)
    campaigns: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mid_write(self) -> int:
        return sum(k.mid_write for k in self.kills)

    def lost(self) -> list[int]:
        """Steps each kill cost: the steps its run had done past the step resumed from."""
        return [
            max(0, k.progress - k.resumed)
            for k in self.kills
            if k.progress is not None and k.resumed is not None
        ]

    def line(self) -> str:
        return (
            f"trainer kills: {len(self.kills)} kills ({self.mid_write} during checkpoint "
            f"writes), {len(self.violations)} violations"
        )

    def details(self) -> str:
        lost = self.lost()
        modes = {m: sum(k.mode == m for k in self.kills) for m in MODES}
        steps = (
            f"steps lost per kill: median {statistics.median(lost):g}, max {max(lost)} "
            f"(over {len(lost)} kills whose run had logged a step; at most {CHECKPOINT_STEPS} "
            "expected)"
            if lost
            else "steps lost per kill: no kill after a logged step"
        )
        return (
            f"{self.campaigns} runs to completion; kills aimed at {modes}; {steps}; "
            f"{self.seconds:.0f} s"
        )


@dataclass
class Run:
    """One start of the trainer: its process and the result folder(s) it made."""

    proc: subprocess.Popen[str]
    before: set[Path]
    stdout: Path
    stderr: Path

    def folders(self, out: Path) -> list[Path]:
        return sorted(set(out.glob(RESULT_DIR_GLOB)) - self.before)

    def tmp_files(self, out: Path) -> list[Path]:
        return [p for f in self.folders(out) for p in f.glob(f".*.tmp-{self.proc.pid}")]


def start(out: Path, logs: Path, index: int) -> Run:
    before = set(out.glob(RESULT_DIR_GLOB))
    stdout, stderr = logs / f"run{index}.stdout", logs / f"run{index}.stderr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "shufflenet_trainer.cli", *FLAGS, "--output-dir", str(out)]
    with open(stdout, "w") as std, open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, stdout=std, stderr=err, text=True, env=env)
    return Run(proc, before, stdout, stderr)


def _wait_for(run: Run, ready: Any, deadline: float) -> bool:
    """Poll until `ready()` or the process ends; False when it ended first."""
    while run.proc.poll() is None:
        if ready():
            return True
        if time.monotonic() > deadline:
            return True  # a hung run is killed here and reported by its missing progress
        time.sleep(POLL_SECONDS)
    return False


def aim_and_kill(run: Run, out: Path, mode: str, rng: random.Random) -> bool:
    """Kill `run` at a moment chosen by `mode`; False when it ended by itself first."""
    deadline = time.monotonic() + RUN_TIMEOUT
    if mode == "write":
        # The n-th checkpoint write of this run: the temporary file appears, then a delay
        # within a typical write (about 20 ms here) so that kills fall all through it.
        nth = rng.randint(1, 3)
        for _ in range(nth):
            if not _wait_for(run, lambda: bool(run.tmp_files(out)), deadline):
                return False
            if _ == nth - 1:
                break
            if not _wait_for(run, lambda: not run.tmp_files(out), deadline):
                return False
        time.sleep(rng.uniform(0.0, 0.02))
    elif mode == "train":
        if not _wait_for(run, lambda: bool(run.folders(out)), deadline):
            return False
        time.sleep(rng.uniform(0.0, 1.0))
    else:
        time.sleep(rng.uniform(0.0, 6.0))
    if run.proc.poll() is not None:
        return False
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    return True


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a train.jsonl; a line cut by the kill is skipped."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads(line)


class Checkpoints:
    """What the checkpoints under an output folder hold, loaded here (cached by mtime)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, int, int], int | str] = {}

    def step_of(self, path: Path) -> int | str:
        """The checkpoint's global step, or why it is not a usable checkpoint."""
        st = path.stat()
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._cache:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                self._cache[key] = f"does not load ({type(exc).__name__}: {exc})"[:200]
            else:
                needed = {"state_dict", "optimizer", "arch", "epoch", "global_step"}
                missing = needed - set(obj) if isinstance(obj, dict) else needed
                self._cache[key] = int(obj["global_step"]) if not missing else f"lacks {missing}"
        return self._cache[key]

    def last_completed(self, out: Path, violations: list[str]) -> int:
        """The highest global step on disk; a file under a final name that is not a
        complete checkpoint is a violation."""
        best = 0
        for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
            for path in out.glob(f"{RESULT_DIR_GLOB}/{name}"):
                step = self.step_of(path)
                if isinstance(step, str):
                    violations.append(f"{path.relative_to(out.parent)} {step}")
                else:
                    best = max(best, step)
        return best


def logged_saves(folder: Path) -> int:
    """The highest global step the run's log says it checkpointed (epoch records are
    written after the epoch's checkpoint, checkpoint records after theirs)."""
    steps = [
        int(r["global_step"])
        for r in read_jsonl(folder / "train.jsonl")
        if r.get("kind") in ("checkpoint", "epoch") and "checkpoint_seconds" in r
    ]
    return max(steps, default=0)


def logged_progress(folder: Path) -> int | None:
    steps = [int(r["global_step"]) for r in read_jsonl(folder / "train.jsonl") if "step" in r]
    return max(steps, default=None) if steps else None


def resumed_at(folder: Path, ckpts: Checkpoints, violations: list[str]) -> int | None:
    """The global step the run in `folder` resumed from (0: a fresh start; None: it said
    nothing yet), checked against the checkpoint it names and the first step it logged."""
    log = folder / "train.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    if FRESH in text:
        at = 0
    elif m := RESUMED.search(text):
        at = int(m[2]) * STEPS + (int(m[3]) - 1 if m[3] else 0)
        path = Path(m[1])
        on_disk = ckpts.step_of(path) if path.is_file() else "is gone"
        if on_disk != at:
            violations.append(f"{folder.name} says it resumed at step {at} from {path}: {on_disk}")
    else:
        return None
    first = next(
        (
            int(r["global_step"])
            for r in read_jsonl(folder / "train.jsonl")
            if r.get("kind") == "step"
        ),
        None,
    )
    if first is not None and first != at + 1:
        violations.append(f"{folder.name} resumed at step {at} but its first step is {first}")
    return at


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = max(out.glob(f"{RESULT_DIR_GLOB}/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime)
    obj = torch.load(latest, map_location="cpu", weights_only=True)
    assert obj["epoch"] == EPOCHS and obj["global_step"] == EPOCHS * STEPS, latest
    return obj["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_kills(kills: int, seed: int, workdir: Path) -> Summary:
    """Kill and resume until `kills` kills, then let the last run finish; see the module."""
    rng = random.Random(seed)
    summary = Summary()
    t0 = time.monotonic()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    reference_out = workdir / "reference"
    ref = start(reference_out, logs, 0)
    if ref.proc.wait(timeout=RUN_TIMEOUT * 2) != 0:
        raise RuntimeError(f"the unkilled run failed: {ref.stderr.read_text()[-2000:]}")
    reference = final_weights(reference_out)
    ckpts = Checkpoints()
    campaign, out = 0, workdir / "c0"
    pending: list[Kill] = []  # kills whose resume no run has reported yet
    index = 0
    while True:
        index += 1
        run = start(out, logs, index)
        killing = len(summary.kills) < kills
        mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
        killed = aim_and_kill(run, out, mode, rng) if killing else False
        if not killed:
            run.proc.wait(timeout=RUN_TIMEOUT)
        folders = run.folders(out)
        violations: list[str] = []
        # A run that finds the last epoch's checkpoint says so and makes no folder.
        starts = [resumed_at(folder, ckpts, violations) for folder in folders]
        if FINISHED in run.stdout.read_text(errors="replace"):
            starts.append(END)
        for at in starts:
            if at is None:
                continue
            for k in pending:
                k.resumed = at
                if at < k.saved:
                    violations.append(
                        f"resumed at step {at}, before the checkpoint of step {k.saved} that "
                        "was complete at an earlier kill"
                    )
            pending = []
        if killed:
            saved = ckpts.last_completed(out, violations)
            for folder in folders:
                if logged_saves(folder) > saved:
                    violations.append(
                        f"{folder.name} logged a checkpoint of step {logged_saves(folder)} "
                        f"but the last complete one on disk is step {saved}"
                    )
            progress = max(
                (p for f in folders if (p := logged_progress(f)) is not None), default=None
            )
            kill = Kill(mode, bool(run.tmp_files(out)), saved, progress)
            summary.kills.append(kill)
            pending.append(kill)
        elif run.proc.returncode != 0:
            last = (run.stderr.read_text().strip().splitlines() or ["(no stderr)"])[-1]
            violations.append(f"run {index} exited {run.proc.returncode}: {last}")
        else:
            summary.campaigns += 1
            if pending:
                violations.append(f"campaign {campaign} ended with {len(pending)} unseen resumes")
            pending = []
            try:
                if not same_weights(final_weights(out), reference):
                    violations.append(f"campaign {campaign}: final weights differ from unkilled")
            except AssertionError as exc:
                violations.append(f"campaign {campaign}: last checkpoint is not the end: {exc}")
            if violations:
                out.rename(out.with_name(f"{out.name}-kept"))  # for a look at what happened
            else:
                shutil.rmtree(out)
            campaign += 1
            out = workdir / f"c{campaign}"
        summary.violations += [f"run {index} ({mode}): {v}" for v in violations]
        if violations and not killed and run.proc.returncode != 0:
            break  # a run that fails by itself would fail again
        if not killing and not killed and run.proc.returncode == 0:
            break
    summary.seconds = time.monotonic() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak.trainer_kills", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trainer-kills-"))
    try:
        summary = run_kills(args.kills, args.seed, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(summary.line())
    for v in summary.violations:
        print(f"  {v}")
    print(summary.details())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
