"""Tier 1, recovery in place, on CPU with gloo: each rank's process (as a pod's entrypoint
runs it) supervises its training process; a killed training process is started again on
every rank under a new generation, from the run's last checkpoint, without the rank's own
process exiting (train/supervisor.py, docs/reliability.md).

Ranks are started as in test_distributed.py (its helpers), 2 ranks, ShuffleNetV2 x0.5 on
32-pixel digits, 1 thread a rank.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from integration.test_distributed import SMALL, start_ranks, wait_all, wait_for

from shufflenet_contract.env import INPLACE_BACKOFF, INPLACE_RESTARTS, METRICS_PORT
from shufflenet_contract.exitcodes import EXIT_CONFIG, EXIT_DIST
from shufflenet_trainer.train.supervisor import RECORD_NAME

pytestmark = pytest.mark.slow

TIMEOUT = 30  # --dist-timeout: the barrier's bound too; every wait below is far shorter
FLAGS = [
    *SMALL, "-b", "16", "--epochs", "2", "--max-steps-per-epoch", "12", "--checkpoint-steps",
    "3", "-p", "1", "--dist-timeout", TIMEOUT, "--resume", "auto",
]  # fmt: skip


def budget(restarts: int) -> dict[str, str]:
    return {INPLACE_RESTARTS: str(restarts), INPLACE_BACKOFF: "0.2"}


def training_process(supervisor: int) -> int:
    """The pid of the training process a rank's supervisor runs now."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for f in out.glob(f"training_*/{RECORD_NAME}") for line in f.open()]


def logs_of(logs: Path) -> str:
    return "".join(f.read_text() for f in sorted(logs.glob("rank*.out")))


def kill_training_process(supervisor: int) -> int:
    pid = training_process(supervisor)
    os.kill(pid, signal.SIGKILL)
    return pid


def recover_once(procs: list[subprocess.Popen[bytes]], out: Path) -> tuple[int, float]:
    """Once a checkpoint is saved, SIGKILL rank 1's training process and wait for the first
    step after the recovery: the killed pid, and the seconds from the kill to that step."""
    wait_for(lambda: any(out.glob("training_*/checkpoint.pth.tar")), 120, "a checkpoint")
    t0 = time.monotonic()
    killed = kill_training_process(procs[1].pid)
    wait_for(lambda: bool(records(out)), 120, "the first step after the recovery")
    return killed, time.monotonic() - t0


def test_a_killed_training_process_restarts_in_place_and_the_run_finishes(
    digits32: Path, tmp_path: Path
) -> None:
    out, logs = tmp_path / "job", tmp_path / "logs"
    procs = start_ranks(2, [digits32, *FLAGS, "--output-dir", out], logs, lambda r: budget(2))
    try:
        killed, to_first_step = recover_once(procs, out)
        assert all(p.poll() is None for p in procs), "a rank's own process exited"
        assert training_process(procs[1].pid) != killed
        codes = wait_all(procs, 300)
    finally:
        for p in procs:
            p.kill()
    text = logs_of(logs)
    assert codes == [0, 0], text[-3000:]
    (record,) = records(out)
    assert record["generation"] == 1 and record["cause"] == "rank 1: exit 137 (SIGKILL)"
    assert 0 < record["rendezvous_seconds"] <= record["checkpoint_loaded_seconds"]
    assert record["checkpoint_loaded_seconds"] <= record["first_step_seconds"]
    assert text.count("generation 1 met") == 2 and "resumed from" in text
    print(f"SIGKILL -> first step of generation 1: {to_first_step:.2f}s; record {record}")


def test_a_permanent_exit_is_not_retried_and_ends_every_rank_at_once(
    digits32: Path, tmp_path: Path
) -> None:
    # Rank 1's training process cannot bind its metrics port (taken: exit 2, a configuration
    # error); rank 0's, waiting for it in the process group's set-up, is stopped by its
    # supervisor once rank 1's says so (134), well before --dist-timeout, and neither
    # starts a generation 1.
    out, logs = tmp_path / "job", tmp_path / "logs"
    flags = [digits32, *FLAGS, "--output-dir", out]
    at = flags.index("--metrics-port")
    del flags[at : at + 2]  # the exporter reads METRICS_PORT instead
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        def env(rank: int) -> dict[str, str]:
            return {**budget(2), METRICS_PORT: port if rank == 1 else "0"}

        t0 = time.monotonic()
        procs = start_ranks(2, flags, logs, env)
        codes = wait_all(procs, 120)
        took = time.monotonic() - t0
    text = logs_of(logs)
    assert codes == [EXIT_DIST, EXIT_CONFIG], text[-3000:]
    assert "rank 1 generation 0: exit 2 (bad configuration) is not retried in place" in text
    assert "generation 1" not in text
    assert took < TIMEOUT, took


def test_past_the_budget_the_rank_exits_with_its_training_process_code(
    digits32: Path, tmp_path: Path
) -> None:
    out, logs = tmp_path / "job", tmp_path / "logs"
    procs = start_ranks(2, [digits32, *FLAGS, "--output-dir", out], logs, lambda r: budget(1))
    try:
        recover_once(procs, out)
        kill_training_process(procs[1].pid)
        codes = wait_all(procs, 120)
    finally:
        for p in procs:
            p.kill()
    text = logs_of(logs)
    assert codes == [EXIT_DIST, 137], (codes, text[-3000:])
    assert "restarts in place spent (1)" in text
