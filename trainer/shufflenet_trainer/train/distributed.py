"""One rank of a data-parallel job: process group, watchdog, metric reductions, stop votes.

- The rank environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) is read by the shared contract
  (`shufflenet_contract.env`), the one the operator and the launchers write with.
- Backend per device: gloo on CPU, nccl on CUDA, hccl on Ascend. With a RANK_TABLE_FILE
  the rank first waits for its attempt's completed table, checks it and points
  RANK_TABLE_FILE at a regular-file copy, the only kind HCCL uses (docs/ranktable.md).
- Every wait on peers is bounded by --dist-timeout: the process group's own timeout for
  collectives and set-up, and a watchdog that ends the rank when no progress is made for
  that long (a backstop for backends whose hung collectives do not time out by themselves).
- Metrics and control traffic (stop votes, the result folder name, barriers) go over a gloo
  group on the host: small, off the device stream, and free of dtype limits of the device
  backend (float64 sums).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from shufflenet_contract import ranktable
from shufflenet_contract.env import (
    RANK_TABLE_DIR,
    RANK_TABLE_FILE,
    EnvError,
    RankEnv,
    read_generation,
    read_rank_env,
)

from ..errors import EXIT_DIST, ConfigError, DistributedError, first_line

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def rank_environment(environ: Mapping[str, str] | None = None) -> RankEnv:
    """The rank environment of this process; a bad variable is a configuration error."""
    try:
        return read_rank_env(os.environ if environ is None else environ)
    except EnvError as exc:
        raise ConfigError(f"rank environment: {exc}") from None


class PeerLostError(RuntimeError):
    """A collective of the control group (votes, metric sums, barriers) failed: its inputs are
    this process's own small host tensors, so the failure can only be the peers'."""


# Peers are lost when a collective fails, and the backends say so in their own ways:
# - NCCL (and the c10d store, sockets, watchdog timeouts) raise torch's DistBackendError,
#   DistNetworkError and DistStoreError (torch/distributed/__init__.py), whatever the text.
# - gloo raises plain RuntimeErrors, prefixed with the gloo source location that threw them;
#   those of its transport layer (pair/buffer reads and writes: a connection reset, a recv
#   timed out) are about the peer. Gloo's other errors (enforce failures) are misuse.
# - torch_npu turns a failed HCCL call into a RuntimeError "HCCL function error: <call>, error
#   code is <HcclResult>" (HCCL_CHECK_ERROR in Ascend/pytorch
#   torch_npu/csrc/distributed/HCCLUtils.hpp); the HcclResult values of a lost or unreachable
#   peer (hccl_types.h) are below. Parameter, memory, file and support errors are not.
_TORCH_PEER_ERRORS: tuple[type[BaseException], ...] = tuple(
    t
    for t in (
        getattr(dist, "DistBackendError", None),
        getattr(dist, "DistNetworkError", None),
        getattr(dist, "DistStoreError", None),
    )
    if isinstance(t, type)
)
_GLOO_TRANSPORT = re.compile(r"^\[[^\]\s]*\bgloo/transport/[^\]\s]*:\d+\]")
_HCCL_RESULT = re.compile(r"HCCL function error: .*?, error code is (\d+)", re.DOTALL)
HCCL_PEER_RESULTS = {
    9: "HCCL_E_TIMEOUT",
    11: "HCCL_E_TCP_CONNECT",
    12: "HCCL_E_ROCE_CONNECT",
    13: "HCCL_E_TCP_TRANSFER",
    14: "HCCL_E_ROCE_TRANSFER",
    19: "HCCL_E_NETWORK",
    21: "HCCL_E_REMOTE",
    22: "HCCL_E_SUSPENDING",
}


def is_peer_failure(exc: BaseException) -> bool:
    """Whether an exception escaping a multi-rank run is a lost or unreachable peer (exit
    134, retried), judged by its type, the collective that raised it and the backend's own
    error code; never by words that any error may contain."""
    if isinstance(exc, (DistributedError, PeerLostError, *_TORCH_PEER_ERRORS)):
        return True
    if type(exc) is not RuntimeError:
        return False
    text = str(exc)
    if _GLOO_TRANSPORT.match(text):
        return True
    hccl = _HCCL_RESULT.search(text)
    return hccl is not None and int(hccl.group(1)) in HCCL_PEER_RESULTS


@contextlib.contextmanager
def _control_collective(name: str) -> Iterator[None]:
    """A control-group collective: whatever it raises is the peers' doing (see PeerLostError)."""
    try:
        yield
    except RuntimeError as exc:
        raise PeerLostError(f"{name} over the job's ranks failed: {first_line(exc)}") from exc


class Watchdog:
    """Ends the process when `pet` has not been called for `timeout` seconds.

    The process group's timeout covers collectives on gloo; NCCL and HCCL collectives can
    hang past it (their own watchdogs depend on environment settings), and a rank can stall
    outside any collective. Exiting with EXIT_DIST (retryable) lets the operator restart the
    job from its checkpoint instead of holding every device of the job for hours.
    """

    def __init__(
        self,
        timeout: float,
        *,
        label: str = "",
        on_expire: Callable[[float], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.label = label
        self._on_expire = on_expire or self._exit
        self._last = time.monotonic()
        self._paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dist-watchdog", daemon=True)
        self._thread.start()

    def pet(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Local work that may legitimately take long (rank 0 writing a checkpoint)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.pet()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = min(max(self.timeout / 10, 0.05), 5.0)
        while not self._stop.wait(interval):
            idle = time.monotonic() - self._last
            if not self._paused and idle > self.timeout:
                self._on_expire(idle)
                return

    def _exit(self, idle: float) -> None:
        sys.stdout.flush()
        print(
            f"error: {self.label}no progress for {idle:.0f}s (--dist-timeout {self.timeout:g}): "
            "a peer rank is gone or stuck; exiting so the job can restart from its checkpoint",
            file=sys.stderr,
            flush=True,
        )
        # A hung collective cannot be interrupted from Python; only leaving the process ends it.
        os._exit(EXIT_DIST)


class StopFlag:
    """Set by SIGTERM (preemption, pod deletion): the run finishes its step, saves, exits 143."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            print(
                "=> SIGTERM: finishing the current step, then saving a checkpoint",
                file=sys.stderr,
                flush=True,
            )
        self.requested = True

    def install(self) -> StopFlag:
        # Signal handlers can only be set from the main thread; elsewhere (a test driving the
        # training loop from a thread) the default action stays.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


class DistContext:
    """What the training loop (loop.py) needs of the job's other ranks; the single-process
    version is inert."""

    def __init__(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        backend: str | None = None,
        control: Any = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self._control = control  # the gloo group (None: the default group, when it is gloo)
        self.watchdog = watchdog
        self._vote: tuple[Any, Tensor] | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def pet(self) -> None:
        if self.watchdog is not None:
            self.watchdog.pet()

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return self.watchdog.paused() if self.watchdog is not None else contextlib.nullcontext()

    def all_reduce_sum(self, sums: Tensor) -> Tensor:
        """Sum a small counter tensor over ranks (on the host, float64); identity alone."""
        if not self.enabled:
            return sums
        host = sums.detach().to("cpu", torch.float64)
        with _control_collective("all_reduce of the metric sums"):
            dist.all_reduce(host, group=self._control)
        return host

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        with _control_collective("broadcast_object_list"):
            dist.broadcast_object_list(box, src=src, group=self._control)
        return box[0]

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average the floating buffers (BatchNorm running mean/var) over ranks, so that
        every rank validates the same model and rank 0 saves what was validated; the mean of
        the per-rank statistics estimates the global batch's better than rank 0's alone."""
        if not self.enabled:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            with _control_collective("barrier"):
                dist.barrier(group=self._control)

    def stop_vote(self, local: bool) -> bool:
        """Whether any rank asked to stop, decided the same on every rank, without a stall.

        Called once per step on every rank: posts this step's vote asynchronously and returns
        the outcome of the previous step's vote, which has long arrived; so all ranks stop
        after the same step, at most one step after the signal.
        """
        if not self.enabled:
            return local
        outcome = self._collect_vote()
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        with _control_collective("the stop vote"):
            work = dist.all_reduce(flag, group=self._control, async_op=True)
        self._vote = (work, flag)
        return outcome

    def stop_vote_now(self, local: bool) -> bool:
        """A synchronous vote (at an epoch's end), also collecting any vote still in flight."""
        if not self.enabled:
            return local
        pending = self._collect_vote()
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        with _control_collective("the stop vote"):
            dist.all_reduce(flag, group=self._control)
        return pending or bool(flag.item())

    def _collect_vote(self) -> bool:
        if self._vote is None:
            return False
        work, flag = self._vote
        self._vote = None
        with _control_collective("the stop vote"):
            work.wait()
        return bool(flag.item())

    def close(self, *, clean: bool) -> None:
        """Tear down. After a failure only the watchdog stops: destroying a process group
        whose peers are gone can itself hang."""
        if self.watchdog is not None:
            self.watchdog.close()
        if clean and self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _check_rank_table(env: RankEnv, timeout: float) -> None:
    path = env.rank_table_file
    assert path is not None
    directory = env.rank_table_dir or tempfile.gettempdir()
    try:
        member = ranktable.Member.of(env)
        snapshot = ranktable.wait_for_table(path, member, timeout=timeout, poll=1.0)
        copy = ranktable.copy_for_hccl(
            snapshot.text, directory, ranktable.copy_name(env.job_name, env.rank)
        )
    except ranktable.RankTableTimeout as exc:
        raise DistributedError(str(exc)) from None
    except ranktable.RankTableError as exc:
        raise ConfigError(f"{RANK_TABLE_FILE} {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write the rank table's copy for HCCL in {directory} ({exc.strerror}): "
            f"set {RANK_TABLE_DIR} to a writable directory"
        ) from None
    # torch_npu reads the variable when it creates the communicator (getenv), after this.
    os.environ[RANK_TABLE_FILE] = str(copy)
    print(_handoff_line(env.rank, copy, path, snapshot), file=sys.stderr, flush=True)


def _handoff_line(rank: int, copy: Path, mounted: str | Path, snapshot: ranktable.Snapshot) -> str:
    """The one log line of a rank saying which file HCCL was given, from where, of which table."""
    return (
        f"=> rank {rank}: HCCL gets RANK_TABLE_FILE={copy} (a regular-file copy of {mounted}, "
        f"read from {snapshot.source}; table {snapshot.describe()})"
    )


def setup(env: RankEnv, device: torch.device, timeout: float) -> DistContext:
    """Join the job's process group (nothing to do for a single process)."""
    if env.rank_table_file is not None:
        # On every device type, so a CPU stand-in of an NPU job (SHUFFLENET_FORCE_CPU, as
        # snjob run-local --cpu sets it) runs the same path; only HCCL reads the copy.
        _check_rank_table(env, timeout)
    if not env.distributed:
        return DistContext()
    backend = BACKENDS[device.type]
    label = f"rank {env.rank}: "
    delta = datetime.timedelta(seconds=timeout)
    # env:// reads MASTER_ADDR/MASTER_PORT, checked by read_rank_env; rank and world size
    # are passed explicitly so that the RANK_ID/RANK_SIZE aliases work too.
    os.environ.setdefault("MASTER_ADDR", str(env.master_addr))
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    try:
        dist.init_process_group(
            backend, rank=env.rank, world_size=env.world_size, timeout=delta, **_rendezvous(delta)
        )
        control = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=delta)
    except Exception as exc:
        raise DistributedError(
            f"{label}could not join the process group at {env.master_addr}:{env.master_port} "
            f"within {timeout:g}s ({first_line(exc)}): is rank 0 running and reachable?"
        ) from None
    watchdog = Watchdog(timeout, label=label)
    return DistContext(
        rank=env.rank,
        world_size=env.world_size,
        backend=backend,
        control=control,
        watchdog=watchdog,
    )


def _rendezvous(timeout: datetime.timedelta) -> dict[str, Any]:
    """How this process meets its peers: env:// (rank 0 serves the store), or, when a
    supervisor started it (train/supervisor.py), as a client of the supervisors' store under
    this generation's own prefix, so that nothing a dead generation left there (HCCL's root
    info under the key "0", gloo's addresses) is read by this one."""
    generation = read_generation(os.environ)
    if generation is None:
        return {"init_method": "env://"}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return {"store": dist.PrefixStore(f"generation/{generation}", store)}


def wrap_ddp(model: torch.nn.Module, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several ranks.

    broadcast_buffers=False: each rank keeps its own BatchNorm running statistics during an
    epoch instead of taking rank 0's before every forward (a collective per step that buys
    nothing for training); `DistContext.average_buffers` makes them equal before validation
    and checkpoints.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type in ("cuda", "npu") and device.index is not None else None
    # Newer torch renames the flag (and warns on the old name); torch_npu builds lag behind.
    params = inspect.signature(DDP.__init__).parameters
    flag = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DDP(model, device_ids=ids, **{flag: False})
