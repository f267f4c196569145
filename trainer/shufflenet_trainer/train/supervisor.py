"""Tier 1 recovery, in place: each rank's process supervises its training process.

A rank of a multi-rank job (the pod's `shufflenet-train`) does not train itself: it starts
the training process (the same command line, with SHUFFLENET_GENERATION set) and waits.
When that process fails in a way a restart can mend (`in_place_retryable`: its own crash or
kill, or exit 134 because a peer was lost), or when another rank's supervisor announces a
new generation, every supervisor stops its training process, and all meet in a barrier for
the next generation; then each starts its training process again, which joins a fresh
process group and resumes from the run's last checkpoint (`--resume auto`). Pods, devices
and the rank table stay as they are.

The supervisors talk through one TCPStore that rank 0's supervisor serves at
MASTER_ADDR:MASTER_PORT for the whole life of the pod; the training processes join it as
clients, each generation under its own key prefix (`generation/<g>`), so that no key of a
dead generation (HCCL's root info, gloo's addresses, barrier counters) is read by the next.
Why this and not torch's elastic agent, and what HCCL does on the way: docs/reliability.md
(Tier 1: in place).

A permanent exit (configuration, data, a program error: `exitcodes`), a SIGTERM stop (143:
a pod being deleted stops every rank, which no restart in place can bring back), an
exhausted budget, or a barrier that times out (a peer's pod is gone) end the supervisor
with the training process's code, and the operator's whole-job restart takes over.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shufflenet_contract.env import GENERATION, RECOVERY, InPlacePolicy, RankEnv
from shufflenet_contract.exitcodes import EXIT_DIST, EXIT_SIGTERM, MEANINGS, is_retryable

from ..errors import first_line

# How often a supervisor looks at its training process and at the store.
POLL_SECONDS = 0.1
MONITOR_SECONDS = 0.5
# The backoff doubles with each generation up to this.
MAX_BACKOFF_SECONDS = 300.0
# The store's keys for the supervisors; the training processes use `generation/<g>/`.
_GEN = "supervisor/generation"
_ABORT = "supervisor/abort"
RECORD_NAME = "recovery.jsonl"


def in_place_retryable(code: int) -> bool:
    """Whether a training process that exited with `code` is started again in place.

    The exit-code table's retryable codes (>= 128), but 143: a SIGTERM stop means the pod is
    going away (its peers stop with it through the stop vote), which only a whole-job restart
    can answer.
    """
    return is_retryable(code) and code != EXIT_SIGTERM


def backoff_seconds(policy: InPlacePolicy, generation: int) -> float:
    """The pause before `generation` (1, 2, ...) starts: the policy's, doubled each time."""
    return min(policy.backoff_seconds * 2 ** max(generation - 1, 0), MAX_BACKOFF_SECONDS)


def describe_exit(code: int) -> str:
    """`exit 137 (SIGKILL)`, `exit 134 (lost a peer rank or timed out)`, `exit 1`."""
    if code in MEANINGS:
        return f"exit {code} ({MEANINGS[code]})"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit {code} ({signal.Signals(code - 128).name})"
    return f"exit {code}"


def blame(exits: Mapping[int, int]) -> str:
    """The cause of a generation's end from each rank's exit code: the first rank that did
    not merely lose its peer (134), else the first rank."""
    if not exits:
        return "unknown"
    rank = min(exits, key=lambda r: (exits[r] == EXIT_DIST, r))
    return f"rank {rank}: {describe_exit(exits[rank])}"


class Generations:
    """The supervisors' side of the store: the current generation, each generation's exit
    codes, its barrier, and an abort that tells every supervisor to give up."""

    def __init__(self, store: Any, rank: int, world_size: int) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.reason: str | None = None  # why the job gave up tier 1, once it did
        store.compare_set(_GEN, "", "0")  # sets it only where no one did yet

    def current(self) -> int:
        return int(self.store.get(_GEN))

    def advance(self, past: int) -> None:
        """Move the job on from generation `past` (a no-op when a peer did already)."""
        self.store.compare_set(_GEN, str(past), str(past + 1))

    def abort(self, reason: str) -> None:
        self.store.compare_set(_ABORT, "", reason)

    def aborted(self) -> str | None:
        if self.reason is None and self.store.check([_ABORT]):
            self.reason = self.store.get(_ABORT).decode()
        return self.reason

    def report(self, generation: int, code: int, at: float) -> None:
        self.store.set(f"supervisor/{generation}/exit/{self.rank}", f"{code} {at}")

    def exits(self, generation: int) -> dict[int, tuple[int, float]]:
        """Each rank's (exit code, wall time seen) of `generation`, as reported."""
        out = {}
        for rank in range(self.world_size):
            key = f"supervisor/{generation}/exit/{rank}"
            if self.store.check([key]):
                code, at = self.store.get(key).decode().split()
                out[rank] = (int(code), float(at))
        return out

    def meet(self, generation: int, timeout: float, stopped: Callable[[], bool]) -> str | None:
        """Wait until every rank joined `generation`; None when they did, else why not."""
        key = f"supervisor/{generation}/joined"
        self.store.add(key, 1)
        deadline = time.monotonic() + timeout
        while self.store.add(key, 0) < self.world_size:
            if (reason := self.aborted()) is not None:
                return reason
            if stopped():
                return "stopped by SIGTERM"
            if time.monotonic() > deadline:
                return f"not every rank came back within {timeout:g}s"
            time.sleep(POLL_SECONDS)
        return None


def connect(env: RankEnv, timeout: float) -> Any:
    """The supervisors' store: served by rank 0's supervisor, a client elsewhere."""
    import torch.distributed as dist

    return dist.TCPStore(
        str(env.master_addr),
        int(env.master_port or 0),
        env.world_size,
        is_master=env.rank == 0,
        timeout=datetime.timedelta(seconds=timeout),
        wait_for_workers=False,
    )


@dataclass
class Ended:
    code: int  # the training process's exit status (EXIT_DIST when stopped for a peer)
    at: float  # wall time the end was seen
    why: str  # "exited", "peer" (a new generation was announced), "abort", "stop"


class Supervisor:
    """One rank's supervisor (see the module's docstring)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: RankEnv,
        policy: InPlacePolicy,
        timeout: float,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.argv, self.env, self.policy, self.timeout = list(argv), env, policy, timeout
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop.set()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)  # it checkpoints and exits 143, as without us

    def run(self) -> int:
        """Supervise until the job is done or tier 1 cannot help; the exit code to leave with."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        gens = Generations(connect(self.env, self.timeout), self.env.rank, self.env.world_size)
        generation, recovery = 0, None
        while True:
            ended = self._watch(self._start(generation, recovery), gens, generation)
            try:
                recovery = self._after(ended, gens, generation)
            except RuntimeError as exc:  # torch's DistError family: the store's host left
                self.log(
                    f"=> rank {self.env.rank}: the supervisors' store is gone "
                    f"({first_line(exc)}); leaving with {describe_exit(ended.code)}"
                )
                return ended.code
            if recovery is None:
                return EXIT_SIGTERM if ended.why != "stop" and self.stop.is_set() else ended.code
            generation += 1

    def _after(self, ended: Ended, gens: Generations, generation: int) -> dict[str, Any] | None:
        """What follows the end of `generation`'s training process: the next generation's
        recovery, once every rank met it, or None to leave with the process's code."""
        rank = self.env.rank
        if ended.why == "abort":
            self.log(f"=> rank {rank}: stopped its training process: {gens.reason}")
            return None
        if ended.why == "stop" or ended.code == 0:
            return None
        label = f"=> rank {rank} generation {generation}: {describe_exit(ended.code)}"
        if not in_place_retryable(ended.code):
            gens.abort(f"rank {rank}: {describe_exit(ended.code)}")
            self.log(f"{label} is not retried in place")
            return None
        gens.report(generation, ended.code, ended.at)
        gens.advance(generation)
        if generation + 1 > self.policy.restarts:
            gens.abort(f"{self.policy.restarts} restarts in place spent")
            self.log(
                f"{label}; restarts in place spent ({self.policy.restarts}), "
                "leaving it to the job's restart"
            )
            return None
        return self._meet(gens, generation + 1, ended)

    def _meet(self, gens: Generations, generation: int, ended: Ended) -> dict[str, Any] | None:
        """Back off, then the barrier of `generation`; what the new training process is told."""
        pause = backoff_seconds(self.policy, generation)
        self.log(
            f"=> rank {self.env.rank}: {describe_exit(ended.code)} ({ended.why}); "
            f"generation {generation} of at most {self.policy.restarts} in {pause:g}s"
        )
        if self.stop.wait(pause):
            return None
        failed = gens.exits(generation - 1) if self.env.rank == 0 else {}
        problem = gens.meet(generation, self.timeout, self.stop.is_set)
        if problem is not None:
            self.log(f"=> rank {self.env.rank}: generation {generation} not started: {problem}")
            return None
        now = time.time()
        cause = blame({r: c for r, (c, _) in failed.items()}) if failed else ended.why
        first = min((at for _, at in failed.values()), default=ended.at)
        self.log(
            f"=> rank {self.env.rank}: generation {generation} met after "
            f"{now - first:.2f}s (cause {cause})"
        )
        return {"generation": generation, "cause": cause, "failed_at": first, "rendezvous_at": now}

    def _start(self, generation: int, recovery: dict[str, Any] | None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[GENERATION] = str(generation)
        if recovery is not None:
            env[RECOVERY] = json.dumps(recovery)
        argv = self.argv if generation == 0 else with_resume_auto(self.argv)
        # The same process group as ours: a runtime that stops the pod's processes stops it.
        command = [sys.executable, "-m", "shufflenet_trainer.cli", *argv]
        self.child = subprocess.Popen(command, env=env)
        return self.child

    def _watch(self, child: subprocess.Popen[bytes], gens: Generations, generation: int) -> Ended:
        """Wait for the training process; stop it when the job moved on without it."""
        next_look = 0.0
        while (rc := child.poll()) is None:
            if time.monotonic() >= next_look and not self.stop.is_set():
                next_look = time.monotonic() + MONITOR_SECONDS
                why = self._peer_news(gens, generation)
                if why is not None:
                    # Its peers are gone or going: what it computed since the last
                    # checkpoint is lost anyway, and a hung collective could keep it for
                    # the whole --dist-timeout.
                    child.kill()
                    child.wait()
                    return Ended(EXIT_DIST, time.time(), why)
            time.sleep(POLL_SECONDS)
        code = 128 - rc if rc < 0 else rc
        return Ended(code, time.time(), "stop" if self.stop.is_set() else "exited")

    def _peer_news(self, gens: Generations, generation: int) -> str | None:
        try:
            if gens.aborted() is not None:
                return "abort"
            return "peer" if gens.current() > generation else None
        except Exception as exc:  # the store's host is gone: its pod is, so tier 1 cannot help
            gens.reason = f"the supervisors' store is unreachable ({type(exc).__name__})"
            return "abort"


def with_resume_auto(argv: Sequence[str]) -> list[str]:
    """`argv` resuming from the run's last checkpoint: `--resume auto` unless it names one."""
    if any(a == "--resume" or a.startswith("--resume=") for a in argv):
        return list(argv)
    return [*argv, "--resume", "auto"]


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its supervisor dies (prctl
    PR_SET_PDEATHSIG, Linux), so that a supervisor killed alone leaves no training process
    behind to hold the devices and the metrics port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class RecoveryRecord:
    """In a training process started after a recovery: the times to checkpoint loaded and
    first step, as a log line and (rank 0) a line of `recovery.jsonl` in the run folder."""

    def __init__(self, recovery: Mapping[str, Any], rank: int) -> None:
        self.recovery, self.rank = dict(recovery), rank
        self.loaded_at: float | None = None
        self.folder: str | None = None
        self.done = False

    def on_start(self, plan: Mapping[str, Any]) -> None:
        self.loaded_at, self.folder = time.time(), plan.get("folder")

    def on_step(self, event: object) -> None:
        if self.done:
            return
        self.done = True
        record = recovery_record(self.recovery, self.loaded_at or time.time(), time.time())
        line = (
            f"=> rank {self.rank}: recovered generation {record['generation']} "
            f"({record['cause']}): rendezvous {record['rendezvous_seconds']}s, checkpoint "
            f"loaded {record['checkpoint_loaded_seconds']}s, first step "
            f"{record['first_step_seconds']}s after the failure"
        )
        print(line, file=sys.stderr, flush=True)
        if self.folder is not None:
            with open(Path(self.folder) / RECORD_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def recovery_record(
    recovery: Mapping[str, Any], loaded_at: float, step_at: float
) -> dict[str, Any]:
    """One recovery: generation, cause, and seconds from the failure to each milestone."""
    start = float(recovery["failed_at"])
    return {
        "generation": int(recovery["generation"]),
        "cause": recovery["cause"],
        "rendezvous_seconds": round(float(recovery["rendezvous_at"]) - start, 3),
        "checkpoint_loaded_seconds": round(loaded_at - start, 3),
        "first_step_seconds": round(step_at - start, 3),
    }
