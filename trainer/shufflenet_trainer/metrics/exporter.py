"""Prometheus exporter of one training rank: throughput, step timing, loss, accuracy, memory.

The training loop knows nothing about Prometheus: `MetricsExporter` subscribes its methods to
its `Hooks` (train/loop.py: on_start, on_step, on_log, on_epoch, on_eval). Per step it only
bumps two counters, observes two histograms and sets three gauges (a few microseconds; `make
bench` measures it against a training step). Values that need a device sync (loss, FPS@all)
are taken from the print-step records, where the loop synchronises anyway; device memory is
read when scraped.

Names are the project's shared metric names (ARCHITECTURE.md); labels are `job` and `rank`
only (and `tier`, `phase` on the recovery histogram): about 65 series per rank (mostly
histogram buckets), 40 more in a training process started by a restart in place, whatever
the run's length or data. A training process also says where it started (its resumed step,
start and first-step times) and how long it spent in steps, which the operator turns into
status.recoveries and goodput (operator/shufflenet_operator/recoveries.py).
Pod and namespace come from the scrape configuration (the PodMonitor), which must keep the
metrics' own `job` label (`honorLabels: true`), or Prometheus renames it to `exported_job`.

Port: `--metrics-port`, else $METRICS_PORT, else 9400, plus LOCAL_RANK, so that ranks that
share a host (`--nproc`) each get their own port; one rank per pod keeps the base port.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

from shufflenet_contract.env import RECOVERY

from ..errors import ConfigError
from ..train import distributed
from ..train.config import TrainConfig
from ..train.loop import Hooks, StepEvent
from ..train.meters import WARMUP_STEPS

DEFAULT_PORT = 9400
DEFAULT_ADDR = "0.0.0.0"
LABELS = ("job", "rank")

# Step time spans ~10 ms (a GPU at a small per-device batch) to ~1 min (CPU, x2.0).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Waiting for a batch is ~0 when the loaders keep up; the low buckets tell "a little" from
# "none", the high ones catch a starved rank.
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A checkpoint is ~10-100 MB (model, optimizer, history): well under a second on local disk,
# minutes on a congested network volume.
CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# A restart in place takes seconds (its backoff, a rendezvous, a checkpoint read); a
# whole-job restart (new pods, image already pulled) tens of seconds to minutes.
RECOVERY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# The milestones of a recovery, in order, as `shufflenet_recovery_seconds`' phase label.
RECOVERY_PHASES = ("rendezvous", "checkpoint_loaded", "first_step")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer: fix or unset {name}") from None


def resolve_port(cfg: TrainConfig, env: Mapping[str, str]) -> int:
    """The port this rank serves on; 0: exporter disabled.

    `--metrics-port` wins over $METRICS_PORT (default 9400); LOCAL_RANK is added so that the
    ranks started on one host by `--nproc` (or torchrun) do not collide.
    """
    if cfg.metrics_port is not None:
        base, source = cfg.metrics_port, "--metrics-port"
    else:
        base, source = _env_int(env, "METRICS_PORT", DEFAULT_PORT), "METRICS_PORT"
    if base == 0:
        return 0
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    port = base + local_rank
    if not (base > 0 and port <= 65535 and local_rank >= 0):
        raise ConfigError(
            f"{source} {base} (+ LOCAL_RANK {local_rank}) gives port {port}, outside "
            "[1, 65535]: pass a lower --metrics-port, or 0 to disable the exporter"
        )
    return port


def resolve_job(env: Mapping[str, str], cfg: TrainConfig, folder: str | None) -> str:
    """The `job` label: $JOB_NAME (set by the operator, `snjob run-local` and `--nproc`).

    Without it, a single process uses its result folder's name. Ranks of a multi-process run
    without JOB_NAME cannot see rank 0's folder name, so they all use the output folder's name
    and the rendezvous port, which every rank of one job shares.
    """
    name = env.get("JOB_NAME", "").strip()
    if name:
        return name
    if cfg.world_size == 1 and folder:
        return Path(folder).name
    out = Path(cfg.output_dir).resolve().name or "result"
    return f"{out}-{env.get('MASTER_PORT', '0')}"


def _distributed_backend(cfg: TrainConfig) -> str:
    # The collective library of a multi-rank run on this device type, as distributed.py
    # chooses it; "none" for a single process.
    if cfg.world_size == 1:
        return "none"
    return distributed.BACKENDS.get(cfg.device, "gloo")


def _host_memory() -> tuple[float, float]:
    """Resident and peak resident bytes of this process (the "device" of a CPU run)."""
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            resident = float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        resident = peak
    return resident, peak


def _device_memory_reader(device: str) -> Callable[[], tuple[float, float]]:
    """Returns a function giving (allocated, peak allocated) bytes of `device`.

    Read at scrape time on the HTTP thread, so steps pay nothing. The allocator's counters
    are read only once the training thread has initialised the device: a scrape must never
    be the one that creates a CUDA/NPU context.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return _host_memory
    mod: Any = getattr(torch, dev.type, None)

    def read() -> tuple[float, float]:
        # NaN ("unknown") rather than an exception: one failing gauge would fail the scrape.
        try:
            if mod is None or not mod.is_initialized():
                return math.nan, math.nan
            return float(mod.memory_allocated(dev)), float(mod.max_memory_allocated(dev))
        except Exception:
            return math.nan, math.nan

    return read


class MetricsExporter:
    """The metrics of one rank, fed by the training loop's hooks; `start` serves them over HTTP."""

    def __init__(
        self, cfg: TrainConfig, env: Mapping[str, str] | None = None, *, process: bool = True
    ) -> None:
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        # `*_created` series (one per counter and histogram) tell Prometheus nothing its own
        # counter-reset handling does not; leaving them out saves series per rank.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            # CPU seconds, resident memory, open files of the rank's process, for free.
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.images = Counter(
            "shufflenet_train_images",
            "Training images processed by this rank (sum over ranks: the job's images).",
            LABELS,
            registry=r,
        )
        self.images_per_second = Gauge(
            "shufflenet_train_images_per_second",
            "FPS@all: global images/s of the current epoch so far, the first "
            f"{WARMUP_STEPS} steps of each epoch excluded (the CLI's FPS@all; the last "
            "epoch's value during warm-up).",
            LABELS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "shufflenet_train_step_seconds",
            "Wall time of one training step on the host, data wait included.",
            LABELS,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.data_wait_seconds = Histogram(
            "shufflenet_train_data_wait_seconds",
            "Time a training step waited for its batch from the data loader.",
            LABELS,
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.loss = Gauge(
            "shufflenet_train_loss",
            "Training loss, mean over the last print interval (-p) and all ranks.",
            LABELS,
            registry=r,
        )
        self.learning_rate = Gauge(
            "shufflenet_train_learning_rate", "Learning rate of the last step.", LABELS, registry=r
        )
        self.epoch = Gauge(
            "shufflenet_train_epoch",
            "Training progress in epochs: epochs done plus the done fraction of the current one.",
            LABELS,
            registry=r,
        )
        self.target_epochs = Gauge(
            "shufflenet_train_target_epochs",
            "Epochs the run trains for (--epochs); with shufflenet_train_epoch gives the ETA.",
            LABELS,
            registry=r,
        )
        self.world_size = Gauge(
            "shufflenet_train_world_size",
            "Ranks of the job; the count of ranks reporting should equal it.",
            LABELS,
            registry=r,
        )
        self.val_top1 = Gauge(
            "shufflenet_val_top1",
            "Validation top-1 accuracy of the last evaluation, in percent.",
            LABELS,
            registry=r,
        )
        self.val_top5 = Gauge(
            "shufflenet_val_top5",
            "Validation top-5 accuracy of the last evaluation, in percent.",
            LABELS,
            registry=r,
        )
        self.device_memory = Gauge(
            "shufflenet_device_memory_bytes",
            "Device memory of this rank: kind=allocated (now) or peak (this epoch's maximum); "
            "on CPU the process's resident and peak resident memory.",
            (*LABELS, "kind"),
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "shufflenet_checkpoint_seconds",
            "Time to write one checkpoint (rank 0 writes them).",
            LABELS,
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.train_seconds = Counter(
            "shufflenet_train_seconds",
            "Wall time this training process spent in training steps (data wait included): "
            "the job's goodput is its increase over the wall time.",
            LABELS,
            registry=r,
        )
        self.global_step = Gauge(
            "shufflenet_train_global_step",
            "Training steps done in the whole run (those before the checkpoint resumed from "
            "included).",
            LABELS,
            registry=r,
        )
        self.resumed_step = Gauge(
            "shufflenet_train_resumed_step",
            "The run's step this training process started from: the checkpoint's (0 for a "
            "fresh run); steps lost by a recovery are the steps done before it, past this.",
            LABELS,
            registry=r,
        )
        self.start_time = Gauge(
            "shufflenet_train_start_timestamp_seconds",
            "Unix time this training process had its plan made and its checkpoint loaded.",
            LABELS,
            registry=r,
        )
        self.first_step_time = Gauge(
            "shufflenet_train_first_step_timestamp_seconds",
            "Unix time of this training process's first step.",
            LABELS,
            registry=r,
        )
        self.recovery_seconds = Histogram(
            "shufflenet_recovery_seconds",
            "Seconds from a failure to each milestone of the recovery that started this "
            "training process: phase rendezvous, checkpoint_loaded, first_step; tier 1 (in "
            "place). One observation per phase per process: _sum is that recovery's time.",
            (*LABELS, "tier", "phase"),
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.recovery = Info(
            "shufflenet_recovery",
            "The recovery in place that started this training process: generation, cause, "
            "failed_at (Unix time of the failure).",
            LABELS,
            registry=r,
        )
        self.info = Info(
            "shufflenet_train",
            "Static facts of the run: arch, amp, distributed backend, world size, device type.",
            LABELS,
            registry=r,
        )
        self.job: str | None = None
        self._labels: tuple[str, str] = ("", "")
        self.server: Any = None
        self._thread: Any = None
        self._steps_per_epoch = 1
        self._first_step = True
        self._loaded_at: float | None = None

    # -- serving --------------------------------------------------------------------------

    def start(self, port: int, addr: str = DEFAULT_ADDR) -> int:
        """Bind and serve in a daemon thread; ConfigError (exit 2) when the port is taken.

        Called before training starts, so a taken port ends the run before any work.
        Returns the bound port (the OS picks one when `port` is 0 here; tests use that).
        """
        try:
            self.server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port/METRICS_PORT: cannot serve metrics on {addr}:{port} "
                f"({exc.strerror or exc}): pass a free port with --metrics-port or METRICS_PORT "
                "(ranks sharing a host use port + LOCAL_RANK), or --metrics-port 0 to disable "
                "the exporter"
            ) from None
        return int(self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- hooks ----------------------------------------------------------------------------

    def attach(self, hooks: Hooks) -> None:
        hooks.on_start.append(self.on_start)
        hooks.on_step.append(self.on_step)
        hooks.on_log.append(self.on_log)
        hooks.on_epoch.append(self.on_epoch)
        hooks.on_eval.append(self.on_eval)

    def on_start(self, plan: Mapping[str, Any]) -> None:
        """Create this rank's series once the job's name and the plan are known."""
        cfg = self.cfg
        self.job = resolve_job(self.env, cfg, plan.get("folder"))
        labels = self._labels = (self.job, str(cfg.rank))
        self._steps_per_epoch = max(int(plan.get("steps_per_epoch") or 1), 1)
        # Children bound once: a step then costs no label lookups.
        self._images = self.images.labels(*labels)
        self._fps = self.images_per_second.labels(*labels)
        self._step = self.step_seconds.labels(*labels)
        self._wait = self.data_wait_seconds.labels(*labels)
        self._lr = self.learning_rate.labels(*labels)
        self._epoch = self.epoch.labels(*labels)
        self._ckpt = self.checkpoint_seconds.labels(*labels)
        self._train_seconds = self.train_seconds.labels(*labels)
        self._global_step = self.global_step.labels(*labels)
        self._train_seconds.inc(0)
        # The plan comes once the checkpoint is loaded: a recovery's checkpoint_loaded.
        self._loaded_at = time.time()
        self.start_time.labels(*labels).set(self._loaded_at)
        steps = self._steps_per_epoch * int(plan.get("start_epoch") or 0)
        resumed = int(plan.get("global_step", steps))
        self.resumed_step.labels(*labels).set(resumed)
        self._global_step.set(resumed)
        self._fps.set(0)
        self._epoch.set(float(plan.get("start_epoch") or 0))
        self.target_epochs.labels(*labels).set(float(plan.get("epochs") or cfg.epochs))
        self.world_size.labels(*labels).set(cfg.world_size)
        device = str(plan.get("device") or cfg.device)
        read = _device_memory_reader(device)
        self.device_memory.labels(*labels, "allocated").set_function(lambda: read()[0])
        self.device_memory.labels(*labels, "peak").set_function(lambda: read()[1])
        self.info.labels(*labels).info(
            {
                "arch": cfg.arch,
                "amp": cfg.amp,
                "backend": _distributed_backend(cfg),
                "world_size": str(cfg.world_size),
                "device_type": device.split(":")[0],
            }
        )

    def on_step(self, ev: StepEvent) -> None:
        # Hot path: no device access, no allocation beyond the float arithmetic.
        self._images.inc(ev.images // self.cfg.world_size)
        self._train_seconds.inc(ev.step_seconds)
        self._global_step.set(ev.global_step)
        if self._first_step:
            self._on_first_step(ev)
        self._step.observe(ev.step_seconds)
        self._wait.observe(ev.data_wait_seconds)
        self._lr.set(ev.lr)
        self._epoch.set(ev.epoch + (ev.step + 1) / self._steps_per_epoch)

    def _on_first_step(self, ev: StepEvent) -> None:
        """When this process first stepped and, after a restart in place, how long its
        recovery took (SHUFFLENET_RECOVERY, set by the supervisor: train/supervisor.py)."""
        self._first_step = False
        now = time.time()
        self.first_step_time.labels(*self._labels).set(now)
        text = self.env.get(RECOVERY)
        if not text:
            return
        from ..train.supervisor import recovery_record

        recovery = json.loads(text)
        record = recovery_record(recovery, self._loaded_at or now, now)
        for phase in RECOVERY_PHASES:
            seconds = max(float(record[f"{phase}_seconds"]), 0.0)
            self.recovery_seconds.labels(*self._labels, "1", phase).observe(seconds)
        self.recovery.labels(*self._labels).info(
            {
                "generation": str(record["generation"]),
                "cause": str(record["cause"]),
                "failed_at": f"{float(recovery['failed_at']):.3f}",
            }
        )

    def on_log(self, record: Mapping[str, Any]) -> None:
        # Print steps: the loop has synchronised the device, the figures are real. Loss and
        # accuracy series appear with their first value, rather than as a misleading 0.
        self.loss.labels(*self._labels).set(record["loss"])
        fps = record.get("fps_all")
        if fps is not None:
            self._fps.set(fps)

    def on_epoch(self, record: Mapping[str, Any]) -> None:
        self._epoch.set(record["epoch"] + 1)
        self._fps.set(record["images_per_sec"])
        self.loss.labels(*self._labels).set(record["loss"])
        self._set_val(record)
        seconds = record.get("checkpoint_seconds")
        if seconds is not None:
            self._ckpt.observe(seconds)

    def on_eval(self, record: Mapping[str, Any]) -> None:
        self._set_val(record)

    def _set_val(self, record: Mapping[str, Any]) -> None:
        if record.get("val_top1") is not None:
            self.val_top1.labels(*self._labels).set(record["val_top1"])
            self.val_top5.labels(*self._labels).set(record["val_top5"])


def start_exporter(
    cfg: TrainConfig, hooks: Hooks, env: Mapping[str, str] | None = None
) -> MetricsExporter | None:
    """Serve this rank's metrics (unless the port resolves to 0) and attach to `hooks`."""
    env = os.environ if env is None else env
    port = resolve_port(cfg, env)
    if port == 0:
        return None
    exporter = MetricsExporter(cfg, env)
    exporter.start(port, cfg.metrics_addr or env.get("METRICS_ADDR") or DEFAULT_ADDR)
    exporter.attach(hooks)
    return exporter
