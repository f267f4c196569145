"""Leader election through a `coordination.k8s.io/v1` Lease, by client-go's rules.

Two or more replicas run; the one holding the Lease reconciles, the others stand by and
take over once it expires or is released. The rules are those of client-go's
`tools/leaderelection` (leaderelection.go, resourcelock/leaselock.go), so that the Lease
reads like any controller's (`kubectl get lease`):

- The record is the Lease's spec: holderIdentity, leaseDurationSeconds, acquireTime,
  renewTime (MicroTime), leaseTransitions (+1 on every change of holder).
- A candidate never compares renewTime with its own clock (the clocks of two nodes may
  differ): it notes *when it saw the record change* (client-go's observedTime) and may take
  the lease only once it has seen no change for leaseDurationSeconds, or once the holder
  is empty (released).
- Every write carries the resourceVersion that was read, so of two candidates writing at
  once the API server lets one win and answers the other 409 Conflict (optimistic
  concurrency), and a create of a Lease that exists is 409 as well.
- The leader renews every retryPeriod; one that cannot renew within renewDeadline stops
  leading. Here it exits (as kube-controller-manager does): its workers may be mid-way, and
  a restarted process is a clean standby, rather than risk two leaders.
- On a graceful stop the leader releases the lease (client-go's ReleaseOnCancel: holder
  empty, leaseDurationSeconds 1), so that a standby takes over at its next try rather than
  after a whole leaseDuration.
- leaseDuration > renewDeadline > 1.2 x retryPeriod (client-go's NewLeaderElector checks).

`decide` and the record conversions are pure; `LeaderElector` does the API calls.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from . import metrics
from .status import parse_time

log = logging.getLogger(__name__)

# client-go's JitterFactor: renewDeadline must exceed retryPeriod times this.
JITTER_FACTOR = 1.2
# The shortest an API call of a leader may take (its deadline nearly spent): it then
# overruns the deadline by at most two such calls, well within leaseDuration - renewDeadline.
MIN_CALL_TIMEOUT_S = 0.5
# Where a pod finds its own namespace (the ServiceAccount's projected files).
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclasses.dataclass(frozen=True)
class Timing:
    """client-go's defaults for core components (kube-controller-manager, the scheduler)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """What is wrong with these durations, as client-go's NewLeaderElector says it."""
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            return "the leader election durations must be greater than zero"
        if self.lease_duration <= self.renew_deadline:
            return (
                "--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            return (
                f"--leader-elect-renew-deadline must be greater than {JITTER_FACTOR} x "
                "--leader-elect-retry-period"
            )
        return None


@dataclasses.dataclass(frozen=True)
class Record:
    """client-go's LeaderElectionRecord: what the Lease's spec says."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


class Decision(enum.Enum):
    ACQUIRE = "acquire"  # write the lease with me as a new holder
    RENEW = "renew"  # I hold it: write a new renewTime
    WAIT = "wait"  # another holds it and it has not expired
    LOST = "lost"  # I led and can no longer say so: stop leading


# --- the record and the Lease's spec (resourcelock/leaselock.go) ---------------------------


def format_micro_time(t: datetime) -> str:
    """metav1.MicroTime's form, RFC 3339 with microseconds (RFC3339Micro): the API server
    parses exactly six fractional digits, so datetime.isoformat (none when 0) will not do."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(lease: dict[str, Any] | None) -> Record | None:
    """LeaseSpecToLeaderElectionRecord; None when there is no Lease."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return Record(
        holder=spec.get("holderIdentity") or "",
        lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def lease_spec(record: Record) -> dict[str, Any]:
    """LeaderElectionRecordToLeaseSpec (an empty holder is written as such: released)."""
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "leaseTransitions": record.transitions,
    }
    for key, t in (("acquireTime", record.acquire_time), ("renewTime", record.renew_time)):
        if t is not None:
            spec[key] = format_micro_time(t)
    return spec


# --- the decision (leaderelection.go: tryAcquireOrRenew, renew) ----------------------------


def renew_expired(last_renewed: float | None, now: float, timing: Timing) -> bool:
    """Has the leader gone renewDeadline without a successful renew?

    client-go starts a renewal round retryPeriod after each success and gives up when the
    round has not succeeded within renewDeadline; counting from the success itself is
    stricter by a retryPeriod, which leaves the standby's leaseDuration further off.
    """
    return last_renewed is not None and now - last_renewed >= timing.renew_deadline


def decide(
    observed: Record | None,
    observed_at: float,
    now: float,
    identity: str,
    timing: Timing,
    last_renewed: float | None = None,
) -> Decision:
    """What a candidate does next.

    `observed`: the record read now (None: no Lease); `observed_at`: when (on this
    process's monotonic clock) the record was last seen to change; `last_renewed`: when
    this process last wrote the lease as its holder, None while it does not lead.
    """
    leading = last_renewed is not None
    if renew_expired(last_renewed, now, timing):
        return Decision.LOST
    if observed is None:
        # Lost to no one, but gone: a leader does not recreate what an admin deleted
        # under it without first standing down.
        return Decision.LOST if leading else Decision.ACQUIRE
    if observed.holder == identity:
        return Decision.RENEW
    if leading:
        return Decision.LOST  # another wrote the lease: it leads now
    if observed.holder and now < observed_at + observed.lease_duration_seconds:
        return Decision.WAIT
    return Decision.ACQUIRE


def acquired(observed: Record | None, identity: str, wall: datetime, timing: Timing) -> Record:
    """The record a new holder writes (leaseTransitions + 1 over an existing Lease)."""
    return Record(
        holder=identity,
        lease_duration_seconds=int(timing.lease_duration),
        acquire_time=wall,
        renew_time=wall,
        transitions=0 if observed is None else observed.transitions + 1,
    )


def renewed(observed: Record, wall: datetime, timing: Timing) -> Record:
    return dataclasses.replace(
        observed, lease_duration_seconds=int(timing.lease_duration), renew_time=wall
    )


def released(observed: Record, wall: datetime) -> Record:
    """client-go's release(): no holder, a 1 s lease, the transitions kept."""
    return Record(
        lease_duration_seconds=1,
        acquire_time=wall,
        renew_time=wall,
        transitions=observed.transitions,
    )


# --- identity and namespace ---------------------------------------------------------------


def default_identity() -> str:
    """The pod's name (POD_NAME, from the downward API; else the host name) and a random
    suffix, as client-go's users make it (hostname + "_" + uuid): a restarted container of
    the same pod is a new candidate, never mistaken for the leader it was."""
    name = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{name}_{uuid.uuid4()}"


def default_namespace() -> str | None:
    """The operator's own namespace: POD_NAMESPACE, else its ServiceAccount's; None
    outside a pod."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


# --- the API calls ------------------------------------------------------------------------


class Leases:
    """Get, create and replace one Lease, as plain dicts (times in MicroTime form). Each
    call gives up after `timeout` seconds."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            resp = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def write(self, current: dict[str, Any] | None, spec: dict[str, Any], timeout: float) -> None:
        """Create the Lease, or replace `current` with this spec under its resourceVersion
        (409 Conflict when another wrote it since: it raises)."""
        if current is None:
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            self.coordination.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=timeout
            )
            return
        body = {**current, "spec": spec}
        self.coordination.replace_namespaced_lease(
            self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout
        )


class LeaderElector:
    """Runs for the whole process, in a thread: acquire, then renew; `on_started_leading`
    when it acquires, `on_lost` when it stops leading for any reason but `stop`."""

    def __init__(
        self,
        leases: Leases,
        identity: str,
        timing: Timing,
        *,
        on_started_leading: Callable[[], None],
        on_lost: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.leases = leases
        self.identity = identity
        self.timing = timing
        self.on_started_leading = on_started_leading
        self.on_lost = on_lost
        self.clock = clock
        self.wall = wall
        self._observed: Record | None = None
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._last_renewed: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def leading(self) -> bool:
        return self._last_renewed is not None

    def start(self) -> None:
        metrics.LEADER.set(0)
        log.info("leader election: %s tries for lease %s/%s", self.identity,
                 self.leases.namespace, self.leases.name)  # fmt: skip
        self._thread.start()

    def _run(self) -> None:
        while True:
            decision = self.step()
            if decision is Decision.LOST:
                metrics.LEADER.set(0)
                log.error("leader election: lost lease %s/%s (%s): stopping",
                          self.leases.namespace, self.leases.name, self.identity)  # fmt: skip
                self.on_lost()
                return
            if self._stop.wait(self.timing.retry_period):
                return

    def _timeout(self) -> float:
        """How long the next API call may take: a leader's, no longer than its renew
        deadline leaves (as client-go's calls run under it), so that a hung connection
        cannot keep it leading past the deadline; a candidate's, the renew deadline."""
        if self._last_renewed is None:
            return self.timing.renew_deadline
        left = self._last_renewed + self.timing.renew_deadline - self.clock()
        return max(left, MIN_CALL_TIMEOUT_S)

    def step(self) -> Decision:
        """One try: read the Lease, decide, and write it when acquiring or renewing."""
        try:
            lease = self.leases.get(self._timeout())
            now = self.clock()
            self._observe(lease, now)
            decision = decide(
                self._observed, self._observed_at, now, self.identity, self.timing,
                self._last_renewed,
            )  # fmt: skip
            if decision in (Decision.ACQUIRE, Decision.RENEW):
                self._write(lease, decision, now)
            return decision
        except Exception as exc:  # unreachable, 409 Conflict, 403...: try again later
            now = self.clock()
            log.warning("leader election: lease %s/%s: %s", self.leases.namespace,
                        self.leases.name, _brief(exc))  # fmt: skip
            if renew_expired(self._last_renewed, now, self.timing):
                return Decision.LOST
            return Decision.RENEW if self.leading else Decision.WAIT

    def _observe(self, lease: dict[str, Any] | None, now: float) -> None:
        spec = None if lease is None else lease.get("spec") or {}
        if lease is None or spec != self._observed_spec:
            self._observed, self._observed_spec, self._observed_at = record_of(lease), spec, now
            if self._observed is not None and self._observed.holder != self.identity:
                log.info("leader election: lease held by %r", self._observed.holder or None)

    def _write(self, lease: dict[str, Any] | None, decision: Decision, now: float) -> None:
        wall = self.wall()
        record = (
            renewed(self._observed, wall, self.timing)  # type: ignore[arg-type]
            if decision is Decision.RENEW
            else acquired(self._observed, self.identity, wall, self.timing)
        )
        spec = lease_spec(record)
        self.leases.write(lease, spec, self._timeout())
        self._observed, self._observed_spec, self._observed_at = record, spec, now
        first = not self.leading
        self._last_renewed = now
        if first:
            metrics.LEADER.set(1)
            log.info("leader election: %s leads (lease %s/%s, transitions %d)", self.identity,
                     self.leases.namespace, self.leases.name, record.transitions)  # fmt: skip
            self.on_started_leading()

    def stop(self) -> None:
        """Stop trying; a leader releases the lease (call it once its work has stopped:
        client-go's ReleaseOnCancel asks the same)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timing.renew_deadline)
        if not self.leading:
            return
        self._last_renewed = None
        metrics.LEADER.set(0)
        try:
            lease = self.leases.get(self.timing.retry_period)
            record = record_of(lease)
            if lease is not None and record is not None and record.holder == self.identity:
                released_spec = lease_spec(released(record, self.wall()))
                self.leases.write(lease, released_spec, self.timing.retry_period)
                log.info("leader election: released lease %s/%s", self.leases.namespace,
                         self.leases.name)  # fmt: skip
        except Exception as exc:  # it expires by itself then
            log.warning("leader election: release failed: %s", _brief(exc))


def _brief(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
