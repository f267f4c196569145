"""Start the ranks of a job on this host and supervise them, as a cluster would.

Used by `shufflenet-train --nproc N` (one process per device, like the Ascend ModelZoo's
run_8p.sh or torchrun) and by `snjob run-local`. Each rank gets the environment from
`shufflenet_contract.env.rank_env`, the function the operator uses for its pods.

Supervision follows the operator's rules on one machine: when a rank fails, the others are
stopped (SIGTERM, so they save what they can, then SIGKILL after a grace period) and the job
ends with the first failing rank's exit code; SIGTERM or Ctrl-C to the launcher is passed to
every rank as SIGTERM, so the job checkpoints and exits 143.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from shufflenet_contract.env import RankEnv, hccl_connect_timeout, rank_env
from shufflenet_contract.job import TRAINER_DEVICE

from ..compat import strip_flags
from ..errors import EXIT_DIST, ConfigError

if TYPE_CHECKING:  # jobs/ runs without the trainer's training stack: only the type here
    from ..train.config import TrainConfig

# How long ranks asked to stop may take to save a checkpoint before they are killed.
STOP_GRACE_SECONDS = 60.0
POLL_SECONDS = 0.2
# The trainer's --device word -> the job's device type (the inverse of the contract's map).
TRAINER_DEVICE_TYPE = {trainer: job_type for job_type, trainer in TRAINER_DEVICE.items()}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the rendezvous port of a local job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def exit_status(code: int) -> int:
    """A Popen return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def cpu_threads(ranks: int) -> int:
    """Intra-op threads per CPU rank, so that N ranks on one host share its cores instead of
    each spinning up a thread per core (oversubscription makes every rank slower)."""
    return max(1, (os.cpu_count() or 1) // ranks)


@dataclass
class Rank:
    rank: int
    proc: subprocess.Popen[Any]
    code: int | None = None


@dataclass
class Outcome:
    code: int  # the job's exit code
    failed_rank: int | None = None  # the first rank that failed, if any
    codes: dict[int, int] = field(default_factory=dict)
    interrupted: bool = False  # stopped on the launcher's SIGTERM/SIGINT


def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> subprocess.Popen[Any]:
    # A session of its own: Ctrl-C at the terminal reaches the launcher only, which then
    # stops the ranks in order instead of every process dying mid-step.
    return subprocess.Popen(
        list(command), env=dict(env), stdout=stdout, stderr=stderr, start_new_session=True
    )


def supervise(
    ranks: list[Rank],
    *,
    grace: float = STOP_GRACE_SECONDS,
    on_tick: Callable[[], None] | None = None,
    log: Callable[[str], None] = print,
) -> Outcome:
    """Wait for every rank; stop the rest when one fails; pass SIGTERM/SIGINT on."""
    interrupted = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        interrupted.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    failed: int | None = None
    stop_sent: float | None = None
    try:
        while True:
            newly_failed = []
            for r in ranks:
                if r.code is None and (rc := r.proc.poll()) is not None:
                    r.code = exit_status(rc)
                    if r.code != 0:
                        newly_failed.append(r)
            if newly_failed and failed is None and stop_sent is None:
                # Of ranks seen ending together, blame one that did not merely lose its peer.
                newly_failed.sort(key=lambda r: r.code == EXIT_DIST)
                failed = newly_failed[0].rank
            running = [r for r in ranks if r.code is None]
            if not running:
                break
            if stop_sent is None and (failed is not None or interrupted.is_set()):
                why = (
                    f"rank {failed} exited with {ranks[failed].code}"
                    if failed is not None
                    else "interrupted"
                )
                log(f"=> {why}: stopping the other ranks (SIGTERM, then SIGKILL after {grace:g}s)")
                for r in running:
                    with contextlib.suppress(ProcessLookupError):
                        r.proc.send_signal(signal.SIGTERM)
                stop_sent = time.monotonic()
            elif stop_sent is not None and time.monotonic() - stop_sent > grace:
                for r in running:
                    with contextlib.suppress(ProcessLookupError):
                        r.proc.kill()
            if on_tick is not None:
                on_tick()
            time.sleep(POLL_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _reap_sessions(ranks)
    codes = {r.rank: int(r.code or 0) for r in ranks}
    if failed is not None:
        return Outcome(codes[failed], failed, codes, interrupted.is_set())
    if interrupted.is_set():
        # Stopped on request: 143 when the ranks saved and exited as asked (0 when they
        # happened to finish first).
        return Outcome(max(codes.values(), default=0), None, codes, True)
    return Outcome(0, None, codes)


def _reap_sessions(ranks: list[Rank]) -> None:
    """Kill whatever a rank left behind in its session (e.g. data-loader workers of a rank
    that was killed), so that a restarted attempt finds its ports and devices free."""
    for r in ranks:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid


# Launcher flags: the ranks must not see them (they would start launchers of their own).
_LAUNCHER_FLAGS = ("--nproc", "--device-list")


def strip_launcher_flags(argv: Sequence[str]) -> list[str]:
    return strip_flags(argv, _LAUNCHER_FLAGS)


def _relay(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(prefix + line)
        sys.stderr.flush()


@dataclass(frozen=True)
class Node:
    """Where this host's `--nproc` ranks sit in their job."""

    first_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: a free local port

    @property
    def local(self) -> bool:
        return self.master_port is None


def node_of(env: RankEnv, nproc: int) -> Node:
    """The job this launcher belongs to.

    Without a rank environment, the `--nproc` ranks are the whole job (rendezvous on this
    host). A pod holding several devices of a larger job (the operator's spec.devices.perPod)
    gets the environment of its first rank with LOCAL_WORLD_SIZE = its devices, and starts
    ranks RANK .. RANK + nproc - 1 of WORLD_SIZE against MASTER_ADDR.
    """
    if not env.distributed:
        return Node(world_size=nproc)
    if env.local_world_size != nproc or env.local_rank != 0 or env.rank % nproc:
        raise ConfigError(
            f"--nproc {nproc}: this process is already rank {env.rank} of {env.world_size} "
            f"(RANK/WORLD_SIZE are set, LOCAL_WORLD_SIZE={env.local_world_size}): drop --nproc, "
            "or set LOCAL_WORLD_SIZE to it and RANK to the host's first rank"
        )
    assert env.master_addr is not None and env.master_port is not None
    return Node(env.rank, env.world_size, env.master_addr, env.master_port)


def launch_nproc(cfg: TrainConfig, argv: Sequence[str], node: Node) -> int:
    """`shufflenet-train --nproc N [--device-list ...]`: N ranks of one job on this host.

    Rank 0 prints to this terminal; the other ranks write their logs into rank 0's result
    folder (`rank<k>.log`) and their errors here, prefixed with the rank.
    """
    assert cfg.nproc is not None
    if any(a == "--device-id" or a.startswith("--device-id=") for a in argv):
        raise ConfigError("--device-id would put every rank on one device: use --device-list")
    n = cfg.nproc
    devices = list(cfg.device_list or range(n))
    if node.local:
        port = int(os.environ.get("MASTER_PORT") or free_port())
    else:
        assert node.master_port is not None
        port = node.master_port
    args = strip_launcher_flags(argv)
    command = [sys.executable, "-m", "shufflenet_trainer.cli", *args]
    ranks: list[Rank] = []
    relays: list[threading.Thread] = []
    first = node.first_rank
    print(
        f"=> starting ranks {first}..{first + n - 1} of {node.world_size} on {cfg.device}"
        + (f" devices {','.join(map(str, devices))}" if cfg.device != "cpu" else "")
        + f", rendezvous {node.master_addr}:{port}",
        flush=True,
    )
    for k in range(n):
        env = dict(os.environ)
        rank = RankEnv(
            rank=first + k,
            world_size=node.world_size,
            local_rank=k,
            local_world_size=n,
            master_addr=node.master_addr,
            master_port=port,
            device_id=devices[k],
            rank_table_file=os.environ.get("RANK_TABLE_FILE"),
            job_name=os.environ.get("JOB_NAME", "local"),
            hccl_connect_timeout=hccl_connect_timeout(cfg.dist_timeout),
        )
        env.update(rank_env(rank, device_type=TRAINER_DEVICE_TYPE[cfg.device]))
        if cfg.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(cpu_threads(n))
        if k == 0:
            proc = spawn(command, env)
        else:
            proc = spawn(command, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stderr is not None
            stream = open(proc.stderr.fileno(), encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
            t = threading.Thread(target=_relay, args=(stream, f"[rank {first + k}] "), daemon=True)
            t.start()
            relays.append(t)
        ranks.append(Rank(k, proc))
    outcome = supervise(ranks)
    for t in relays:
        t.join(timeout=2.0)
    if outcome.failed_rank is not None:
        print(
            f"=> job failed: rank {first + outcome.failed_rank} exited with {outcome.code}",
            file=sys.stderr,
            flush=True,
        )
    return outcome.code
