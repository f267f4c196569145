"""The operator's Prometheus metrics (names shared with the dashboard and the alerts)."""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from shufflenet_contract import crd

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_cpu_seconds_total...: the operator's own footprint.
ProcessCollector(registry=REGISTRY)

JOBS = Gauge(
    "shufflenet_operator_jobs",
    "ShuffleNetTrainingJobs by namespace and phase",
    ["namespace", "phase"],
    registry=REGISTRY,
)
RESTARTS = Counter(
    "shufflenet_operator_job_restarts",
    "whole-job restarts decided by the operator",
    ["namespace", "job"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "shufflenet_operator_reconcile_seconds",
    "time of one reconciliation of a job (API calls included)",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEADER = Gauge(
    "shufflenet_operator_leader",
    "1 while this replica holds the leader Lease and reconciles (or runs without leader "
    "election), 0 while it stands by",
    registry=REGISTRY,
)
RANKTABLE_SECONDS = Histogram(
    "shufflenet_operator_ranktable_seconds",
    "from the rank pods' creation to a completed HCCL rank table",
    registry=REGISTRY,
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)

RECOVERY_SECONDS = Histogram(
    "shufflenet_operator_recovery_seconds",
    "from a failure to the first training step after it, by job and recovery tier (1: in "
    "place, from rank 0's metrics; 3: the whole job restarted)",
    ["namespace", "job", "tier"],
    registry=REGISTRY,
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
TIERS = ("1", "2", "3")
GOODPUT = Gauge(
    "shufflenet_operator_job_goodput",
    "share (0-1) of the wall time since the job started that its rank 0 spent in training "
    "steps (status.goodput)",
    ["namespace", "job"],
    registry=REGISTRY,
)


class JobPhases:
    """The phase of every job seen, turned into the per-namespace gauge.

    Every phase of a namespace is exported (0 included), so that a query for Failed jobs
    returns 0, not an empty result, once the last one is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            key = (namespace, name)
            if key not in self._phases:
                # The counter exists at 0 from the job's first sighting (rate() needs it), and
                # so do the recovery histograms: increase() of a job's first recovery.
                RESTARTS.labels(namespace, name).inc(0)
                for tier in TIERS:
                    RECOVERY_SECONDS.labels(namespace, name, tier)
            self._phases[key] = phase or "Pending"
            self._export(namespace)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            if self._phases.pop((namespace, name), None) is not None:
                with contextlib.suppress(KeyError):
                    RESTARTS.remove(namespace, name)
                with contextlib.suppress(KeyError):
                    GOODPUT.remove(namespace, name)
                for tier in TIERS:
                    with contextlib.suppress(KeyError):
                        RECOVERY_SECONDS.remove(namespace, name, tier)
            self._export(namespace)

    def _export(self, namespace: str) -> None:
        phases = [p for (ns, _), p in self._phases.items() if ns == namespace]
        for phase in crd.PHASES:
            JOBS.labels(namespace, phase).set(phases.count(phase))


PHASES = JobPhases()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose the metrics on http://addr:port/metrics (in a daemon thread)."""
    start_http_server(port, addr=addr, registry=REGISTRY)
