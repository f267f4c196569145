"""The environment of one rank: written by the operator (or a local launcher), read by the trainer.

The variables are torchrun's (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
`MASTER_ADDR`, `MASTER_PORT`), so the trainer also runs under torchrun, plus the aliases
Ascend tools and scripts read (`RANK_ID`, `RANK_SIZE`, `DEVICE_ID`, `ASCEND_DEVICE_ID`), the
HCCL rank table path on NPUs, identity/metrics variables, and what a rank needs to recognise
its own attempt's rank table (POD_UID, HOST_IP from the downward API; SHUFFLENET_ATTEMPT).

`rank_env` is the only place that builds this environment, from a `RankEnv`: the operator's
pods, the trainer's `--nproc` launcher and `snjob run-local` all call it. `read_rank_env` is
its inverse, back into a `RankEnv`; its errors name the variable, because a wrong variable is
a deployment bug someone must find.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from .crd import (
    DEFAULT_INPLACE_BACKOFF_SECONDS,
    DEFAULT_INPLACE_RESTARTS,
    DEVICE_TYPES,
    HCCL_EXEC_TIMEOUT_RANGE,
)

RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
RANK_ID = "RANK_ID"
RANK_SIZE = "RANK_SIZE"
DEVICE_ID = "DEVICE_ID"
ASCEND_DEVICE_ID = "ASCEND_DEVICE_ID"
RANK_TABLE_FILE = "RANK_TABLE_FILE"
JOB_NAME = "JOB_NAME"
POD_NAME = "POD_NAME"
POD_IP = "POD_IP"
METRICS_PORT = "METRICS_PORT"
HCCL_CONNECT_TIMEOUT = "HCCL_CONNECT_TIMEOUT"
# How long a chip waits for its peers inside a collective (spec.training.hcclExecTimeoutSeconds).
HCCL_EXEC_TIMEOUT = "HCCL_EXEC_TIMEOUT"
# The pod's UID and its node's IP: a rank table names one-device pods by UID and whole-node
# pods by host IP (docs/ranktable.md), so these tell a rank which entry is its own.
POD_UID = "POD_UID"
HOST_IP = "HOST_IP"
# The whole-job attempt the pod belongs to (the job's status.restarts when it was created);
# the rank-table ConfigMap names the attempt it was built for next to the table.
ATTEMPT = "SHUFFLENET_ATTEMPT"
# Where a rank writes the regular-file copy of the rank table that HCCL reads (default: the
# system's temporary directory, an emptyDir at /tmp in rank pods).
RANK_TABLE_DIR = "SHUFFLENET_RANK_TABLE_DIR"
# TEST-ONLY: "1" runs the rank on CPU with gloo whatever --device says (the precision is then
# the CPU's default), while the job's NPU contract (rank table wait, check, copy) still runs.
# `snjob run-local --cpu` and the real-node tests of NPU jobs use it; a job on real NPUs never
# sets it.
FORCE_CPU = "SHUFFLENET_FORCE_CPU"
# The channel-shuffle kernel policy when --shuffle-kernel is not given (model/kernel_choice.py).
SHUFFLE_KERNEL = "SHUFFLENET_SHUFFLE_KERNEL"

# Tier 1 recovery in place (docs/reliability.md#tier-1-in-place): how many times a rank pod's
# supervisor may start the training processes again under a new generation, and the backoff
# before the first such restart (doubled for each one after it). Written from the job's
# spec.runPolicy.inPlaceRestarts and .inPlaceBackoffSeconds (`inplace_env`); unset, the
# defaults hold. 0 restarts: no supervisor, the training process is the pod's process (the
# whole job restarts, as before).
INPLACE_RESTARTS = "SHUFFLENET_INPLACE_RESTARTS"
INPLACE_BACKOFF = "SHUFFLENET_INPLACE_BACKOFF_SECONDS"
# Written by the supervisor for the training process it starts: the generation it belongs
# to (its process group meets under its own store prefix), and, after a recovery, what that
# recovery was (JSON: generation, cause, failed_at, rendezvous_at; wall-clock seconds).
GENERATION = "SHUFFLENET_GENERATION"
RECOVERY = "SHUFFLENET_RECOVERY"

# Variables the kubelet fills in from the pod (downward API fieldRefs), known only once the
# pod exists: the operator renders them as `valueFrom`, a local launcher sets stand-ins.
DOWNWARD_API = {POD_IP: "status.podIP", POD_UID: "metadata.uid", HOST_IP: "status.hostIP"}

DEFAULT_MASTER_PORT = 29500
# HCCL accepts a connect timeout in this range (seconds; hicann/hccl
# docs/zh/user_guide/hccl_env/HCCL_CONNECT_TIMEOUT.md).
HCCL_TIMEOUT_RANGE = (120, 7200)
# What the operator gives NPU pods at least: torch_npu warns below 300 s in rank-table mode
# (Ascend/pytorch ProcessGroupHCCL.cpp `createHCCLCommEx`), since every rank of a large job
# must have reached the table's rendezvous by then.
HCCL_CONNECT_TIMEOUT_MIN = 300


class EnvError(ValueError):
    """A variable of the rank environment is missing or wrong; the message names it."""


@dataclass(frozen=True)
class RankEnv:
    """The rank environment: what `rank_env` writes and `read_rank_env` reads back (a single
    process when nothing is set)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    device_id: int | None = None  # the device index this process binds, when set
    rank_table_file: str | None = None
    job_name: str | None = None
    pod_name: str | None = None
    pod_ip: str | None = None
    metrics_port: int | None = None
    hccl_connect_timeout: int | None = None
    hccl_exec_timeout: int | None = None
    pod_uid: str | None = None
    host_ip: str | None = None
    attempt: int | None = None
    rank_table_dir: str | None = None
    force_cpu: bool = False

    @property
    def distributed(self) -> bool:
        """True when the process is one rank of a job of several."""
        return self.world_size > 1


def hccl_connect_timeout(seconds: float) -> int:
    """A timeout in seconds clamped into what HCCL accepts, and at least what torch_npu wants
    in rank-table mode (HCCL_CONNECT_TIMEOUT_MIN)."""
    return int(min(max(int(seconds), HCCL_CONNECT_TIMEOUT_MIN), HCCL_TIMEOUT_RANGE[1]))


# What `rank_env` writes, in the order pods list it: (variable, RankEnv field). An alias is a
# row of its own, so it always carries its variable's value.
_ALWAYS = (
    (RANK, "rank"),
    (WORLD_SIZE, "world_size"),
    (LOCAL_RANK, "local_rank"),
    (LOCAL_WORLD_SIZE, "local_world_size"),
    (MASTER_ADDR, "master_addr"),
    (MASTER_PORT, "master_port"),
    (RANK_ID, "rank"),
    (RANK_SIZE, "world_size"),
    (DEVICE_ID, "device_id"),
    (ASCEND_DEVICE_ID, "device_id"),
    (JOB_NAME, "job_name"),
)
_WHEN_SET = (
    (POD_NAME, "pod_name"),
    (POD_IP, "pod_ip"),
    (METRICS_PORT, "metrics_port"),
    (ATTEMPT, "attempt"),
)
# HCCL's variables mean nothing off NPUs, so other pods never get them.
_NPU_WHEN_SET = (
    (RANK_TABLE_FILE, "rank_table_file"),
    (HCCL_CONNECT_TIMEOUT, "hccl_connect_timeout"),
    (HCCL_EXEC_TIMEOUT, "hccl_exec_timeout"),
)
# RankEnv fields `rank_env` never writes: the downward API's (the operator renders them as
# `valueFrom`) and a node's or a test's own settings, which a local launcher adds itself.
# (POD_IP is the downward API's too, but a local launcher's stand-in is written when set.)
NOT_WRITTEN = ("pod_uid", "host_ip", "rank_table_dir", "force_cpu")


def rank_env(env: RankEnv, *, device_type: str) -> dict[str, str]:
    """The environment variables of one rank, all strings, as a pod's `env` wants them.

    The inverse of `read_rank_env`: `read_rank_env(rank_env(e, device_type="npu")) == e` for a
    valid `e` whose NOT_WRITTEN fields are unset. `env.job_name`, `master_addr`,
    `master_port` and `device_id` (the device index the process binds: 0 in a one-device pod,
    the chip of the list on a multi-device host) must be set. `rank_table_file` and the HCCL
    timeouts are written on NPUs only; build `hccl_connect_timeout` with
    `hccl_connect_timeout()`, and `hccl_exec_timeout` must be in HCCL_EXEC_TIMEOUT_RANGE.
    """
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device type {device_type!r}: pass one of {', '.join(DEVICE_TYPES)}")
    if not 0 <= env.rank < env.world_size:
        raise ValueError(f"rank {env.rank} must be in [0, {env.world_size})")
    if not 0 <= env.local_rank < env.local_world_size:
        raise ValueError(f"local rank {env.local_rank} must be in [0, {env.local_world_size})")
    exec_timeout = env.hccl_exec_timeout
    lo, hi = HCCL_EXEC_TIMEOUT_RANGE
    if device_type == "npu" and exec_timeout is not None and not lo <= exec_timeout <= hi:
        raise ValueError(f"HCCL exec timeout {exec_timeout} must be in [{lo}, {hi}]")
    missing = [field for _, field in _ALWAYS if getattr(env, field) is None]
    if missing:
        raise ValueError(f"a rank's environment needs {', '.join(dict.fromkeys(missing))}")
    rows = _ALWAYS + _WHEN_SET + (_NPU_WHEN_SET if device_type == "npu" else ())
    values = ((name, getattr(env, field)) for name, field in rows)
    return {name: str(value) for name, value in values if value is not None}


def _int(environ: Mapping[str, str], name: str, *, minimum: int | None = None) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise EnvError(f"{name}={text!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise EnvError(f"{name}={value} must be >= {minimum}")
    return value


def _alias(environ: Mapping[str, str], name: str, alias: str, minimum: int) -> int | None:
    """The value of `name`, or of its alias; both set must agree."""
    value = _int(environ, name, minimum=minimum)
    other = _int(environ, alias, minimum=minimum)
    if value is not None and other is not None and value != other:
        raise EnvError(f"{name}={value} and {alias}={other} disagree: set one, or both equal")
    return value if value is not None else other


def _port(environ: Mapping[str, str], name: str) -> int | None:
    value = _int(environ, name)
    if value is not None and not 0 < value <= 65535:
        raise EnvError(f"{name}={value} must be a port in [1, 65535]")
    return value


def _ip(environ: Mapping[str, str], name: str) -> str | None:
    text = environ.get(name, "").strip() or None
    if text is not None:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise EnvError(f"{name}={text!r} is not an IP address") from None
    return text


def _flag(environ: Mapping[str, str], name: str) -> bool:
    text = environ.get(name, "").strip().lower()
    if text not in ("", "0", "1", "false", "true"):
        raise EnvError(f"{name}={text!r}: set 1 (or true) to enable, 0 or nothing to disable")
    return text in ("1", "true")


def read_rank_env(environ: Mapping[str, str]) -> RankEnv:
    """Parse and check the rank environment; EnvError names the first bad variable.

    Without RANK/WORLD_SIZE (or RANK_ID/RANK_SIZE) the process is a single-process run.
    """
    world_size = _alias(environ, WORLD_SIZE, RANK_SIZE, minimum=1)
    rank = _alias(environ, RANK, RANK_ID, minimum=0)
    if world_size is None and rank not in (None, 0):
        raise EnvError(f"{RANK}={rank} is set but {WORLD_SIZE} is not: set {WORLD_SIZE}")
    world_size = world_size or 1
    rank = rank or 0
    if rank >= world_size:
        raise EnvError(f"{RANK}={rank} must be < {WORLD_SIZE}={world_size}")
    local_world_size = _int(environ, LOCAL_WORLD_SIZE, minimum=1) or 1
    local_rank = _int(environ, LOCAL_RANK, minimum=0) or 0
    if local_rank >= local_world_size and LOCAL_WORLD_SIZE in environ:
        raise EnvError(f"{LOCAL_RANK}={local_rank} must be < {LOCAL_WORLD_SIZE}={local_world_size}")
    master_addr = environ.get(MASTER_ADDR, "").strip() or None
    master_port = _port(environ, MASTER_PORT)
    if world_size > 1:
        if master_addr is None:
            raise EnvError(
                f"{MASTER_ADDR} is not set but {WORLD_SIZE}={world_size}: set it to the "
                "address of rank 0"
            )
        master_port = master_port or DEFAULT_MASTER_PORT
    pod_ip = _ip(environ, POD_IP)
    timeout = _int(environ, HCCL_CONNECT_TIMEOUT)
    lo, hi = HCCL_TIMEOUT_RANGE
    if timeout is not None and not lo <= timeout <= hi:
        raise EnvError(f"{HCCL_CONNECT_TIMEOUT}={timeout} must be in [{lo}, {hi}] seconds")
    exec_timeout = _int(environ, HCCL_EXEC_TIMEOUT)
    lo, hi = HCCL_EXEC_TIMEOUT_RANGE
    if exec_timeout is not None and not lo <= exec_timeout <= hi:
        raise EnvError(f"{HCCL_EXEC_TIMEOUT}={exec_timeout} must be in [{lo}, {hi}] seconds")
    metrics_port = _int(environ, METRICS_PORT, minimum=0)
    if metrics_port is not None and metrics_port > 65535:
        raise EnvError(f"{METRICS_PORT}={metrics_port} must be in [0, 65535]")
    return RankEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        master_addr=master_addr,
        master_port=master_port,
        device_id=_alias(environ, DEVICE_ID, ASCEND_DEVICE_ID, minimum=0),
        rank_table_file=environ.get(RANK_TABLE_FILE, "").strip() or None,
        job_name=environ.get(JOB_NAME, "").strip() or None,
        pod_name=environ.get(POD_NAME, "").strip() or None,
        pod_ip=pod_ip,
        metrics_port=metrics_port,
        hccl_connect_timeout=timeout,
        hccl_exec_timeout=exec_timeout,
        pod_uid=environ.get(POD_UID, "").strip() or None,
        host_ip=_ip(environ, HOST_IP),
        attempt=_int(environ, ATTEMPT, minimum=0),
        rank_table_dir=environ.get(RANK_TABLE_DIR, "").strip() or None,
        force_cpu=_flag(environ, FORCE_CPU),
    )


@dataclass(frozen=True)
class InPlacePolicy:
    """Tier 1's budget: restarts in place (0: none) and the first restart's backoff."""

    restarts: int = DEFAULT_INPLACE_RESTARTS
    backoff_seconds: float = DEFAULT_INPLACE_BACKOFF_SECONDS


def read_inplace_policy(environ: Mapping[str, str]) -> InPlacePolicy:
    """The in-place restart budget and backoff; EnvError names a bad variable."""
    restarts = _int(environ, INPLACE_RESTARTS, minimum=0)
    text = environ.get(INPLACE_BACKOFF, "").strip()
    backoff = DEFAULT_INPLACE_BACKOFF_SECONDS
    if text:
        try:
            backoff = float(text)
        except ValueError:
            raise EnvError(f"{INPLACE_BACKOFF}={text!r} is not a number of seconds") from None
        if not 0 <= backoff <= 3600:
            raise EnvError(f"{INPLACE_BACKOFF}={text} must be in [0, 3600] seconds")
    return InPlacePolicy(DEFAULT_INPLACE_RESTARTS if restarts is None else restarts, backoff)


def inplace_env(policy: InPlacePolicy) -> dict[str, str]:
    """The variables `read_inplace_policy` reads back as `policy`."""
    return {
        INPLACE_RESTARTS: str(policy.restarts),
        INPLACE_BACKOFF: f"{policy.backoff_seconds:g}",
    }


def read_generation(environ: Mapping[str, str]) -> int | None:
    """The generation a supervised training process belongs to (None: not supervised)."""
    return _int(environ, GENERATION, minimum=0)
