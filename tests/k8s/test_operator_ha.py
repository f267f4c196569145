"""Two operator processes with leader election, through the REAL API server.

Each runs as in its Deployment (`--leader-elect`, client-go's durations: lease 15 s, renew
deadline 10 s, retry 2 s) against the real 1.20 control plane; the Lease is a real
`coordination.k8s.io/v1` object, so the API server's optimistic concurrency decides who
wins. Only the leader reconciles; killed (SIGKILL), the standby takes over once the lease
has gone unrenewed for its duration; stopped (SIGTERM), the leader releases the lease and
the standby takes over at its next try. The jobs have no node: that a job applied after the
leader is gone gets its rank pods and a phase shows the new leader reconciling it.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from sim.node_agent import wait_for

from k8s.cluster import ControlPlane
from k8s.operator_harness import Jobs, OperatorProcess, install_crd, job_manifest
from shufflenet_operator.leader import Timing

LEASE = "shufflenet-operator"
T = Timing()  # what the chart ships
# The standby saw the last renewal up to a retry period after it was written, and tries
# again every retry period: it takes over at most leaseDuration + 2 x retryPeriod after the
# kill. MARGIN: the process, the API calls, a loaded test machine.
MARGIN_S = 3.0


class Replica(OperatorProcess):
    """One replica, with its pod name (the start of its identity)."""

    def __init__(self, cp: ControlPlane, namespace: str, log_dir: Path, pod: str) -> None:
        self.pod = pod
        super().__init__(
            cp,
            namespace,
            log_dir,
            env={"POD_NAME": pod},
            args=[
                "--leader-elect",
                f"--leader-elect-resource-namespace={namespace}",
            ],
        )

    def gauge(self, name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", self.metrics(), re.M)
        return float(found.group(1)) if found else 0.0

    def leads(self) -> bool:
        return self.gauge("shufflenet_operator_leader") == 1

    def reconciles(self) -> float:
        return self.gauge("shufflenet_operator_reconcile_seconds_count")

    def live(self) -> bool:
        url = f"http://127.0.0.1:{self.live_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200


@pytest.fixture
def replicas(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[[], tuple[Replica, Replica]]]:
    """Starts two replicas; returns (leader, standby) once one of them leads."""
    started: list[Replica] = []

    def start() -> tuple[Replica, Replica]:
        install_crd(control_plane.api)
        for pod in ("operator-a", "operator-b"):
            log_dir = tmp_path / pod
            log_dir.mkdir()
            started.append(Replica(control_plane, namespace, log_dir, pod))
            started[-1].start()
        leader = wait_for(
            lambda: next((r for r in started if r.leads()), None),
            timeout=T.retry_period * 3 + MARGIN_S,
            what="a leader",
        )
        (standby,) = [r for r in started if r is not leader]
        return leader, standby

    yield start
    for op in started:
        op.stop()


def lease(cp: ControlPlane, namespace: str) -> client.V1LeaseSpec:
    return client.CoordinationV1Api(cp.api).read_namespaced_lease(LEASE, namespace).spec


def holder_pod(cp: ControlPlane, namespace: str) -> str:
    """The pod part of the holder's identity (POD_NAME + '_' + a random suffix)."""
    return (lease(cp, namespace).holder_identity or "").rpartition("_")[0]


def reconciled(jobs: Jobs, name: str) -> bool:
    """The job has its rank pods and a phase: an operator reconciled it."""
    return bool(jobs.pods(name)) and bool(jobs.status(name).get("phase"))


def test_only_the_leader_reconciles_and_the_standby_stays_live(
    control_plane: ControlPlane, namespace: str, jobs: Jobs, replicas: Callable
) -> None:
    leader, standby = replicas()
    spec = lease(control_plane, namespace)
    assert spec.holder_identity.startswith(f"{leader.pod}_")
    assert spec.lease_duration_seconds == 15 and spec.lease_transitions == 0
    jobs.create(job_manifest("one", device="cpu", count=2))
    wait_for(lambda: reconciled(jobs, "one"), timeout=30, what="the job reconciled")
    assert [p.metadata.name for p in jobs.pods("one")] == ["one-rank-0", "one-rank-1"]
    time.sleep(T.retry_period * 2)  # the standby had the job's events too
    assert leader.reconciles() > 0
    assert standby.reconciles() == 0 and not standby.leads()
    assert standby.live() and leader.live()
    # The leader keeps renewing; the standby keeps waiting.
    before = lease(control_plane, namespace).renew_time
    wait_for(
        lambda: lease(control_plane, namespace).renew_time > before,
        timeout=T.retry_period * 2 + MARGIN_S,
        what="a renewal",
    )
    assert holder_pod(control_plane, namespace) == leader.pod


def test_a_killed_leader_is_replaced_once_its_lease_expires(
    control_plane: ControlPlane, namespace: str, jobs: Jobs, replicas: Callable
) -> None:
    leader, standby = replicas()
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGKILL)  # no release: the lease must expire
    killed = time.monotonic()
    jobs.create(job_manifest("after", device="cpu", count=1))
    bound = T.lease_duration + 2 * T.retry_period + MARGIN_S
    wait_for(lambda: standby.leads(), timeout=bound, what="the standby leading")
    took_over = time.monotonic() - killed
    wait_for(lambda: reconciled(jobs, "after"), timeout=bound, what="the job reconciled")
    done = time.monotonic() - killed
    print(f"\nSIGKILL failover: lease taken after {took_over:.1f}s, job reconciled {done:.1f}s")
    # Not before the lease expired: the standby waited it out.
    assert took_over >= T.lease_duration - T.retry_period
    assert done <= bound
    spec = lease(control_plane, namespace)
    assert holder_pod(control_plane, namespace) == standby.pod
    assert spec.lease_transitions == 1


def test_a_stopped_leader_hands_over_at_once(
    control_plane: ControlPlane, namespace: str, jobs: Jobs, replicas: Callable
) -> None:
    leader, standby = replicas()
    jobs.create(job_manifest("before", device="cpu", count=1))
    wait_for(lambda: reconciled(jobs, "before"), timeout=30, what="the first job reconciled")
    assert leader.proc is not None
    proc = leader.proc
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # as the kubelet stops it in a rollout or a drain
    jobs.create(job_manifest("after", device="cpu", count=1))
    bound = 2 * T.retry_period + MARGIN_S  # the release, then the standby's next try
    wait_for(lambda: standby.leads(), timeout=bound, what="the standby leading")
    took_over = time.monotonic() - stopped
    wait_for(lambda: reconciled(jobs, "after"), timeout=bound, what="the job reconciled")
    done = time.monotonic() - stopped
    print(f"\nSIGTERM handover: lease taken after {took_over:.1f}s, job reconciled {done:.1f}s")
    assert done <= bound
    assert proc.wait(timeout=20) == 0
    assert "released lease" in leader.logs()
    assert holder_pod(control_plane, namespace) == standby.pod


def test_a_leader_that_finds_another_holder_exits(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    # Two leaders must never act at once: one that sees the lease taken (here written by
    # hand, as a candidate with a skewed clock might) stops at its next renewal, exiting for
    # the kubelet to restart it as a standby.
    install_crd(control_plane.api)
    op = Replica(control_plane, namespace, tmp_path, "operator-a")
    op.start()
    try:
        wait_for(op.leads, timeout=T.retry_period * 2 + MARGIN_S, what="it leading")
        client.CoordinationV1Api(control_plane.api).patch_namespaced_lease(
            LEASE, namespace, {"spec": {"holderIdentity": "intruder_1"}}
        )
        assert op.proc is not None
        assert op.proc.wait(timeout=T.retry_period * 2 + MARGIN_S) == 1
        assert "lost lease" in op.logs()
    finally:
        op.stop()


def test_a_paused_leader_stands_down_when_it_wakes(
    control_plane: ControlPlane, namespace: str, replicas: Callable
) -> None:
    # A leader frozen past its lease (SIGSTOP here; a stalled node or a long pause in real
    # life) has missed its renew deadline: woken, it exits at once instead of acting beside
    # the standby that took over meanwhile.
    leader, standby = replicas()
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        bound = T.lease_duration + 2 * T.retry_period + MARGIN_S
        wait_for(lambda: standby.leads(), timeout=bound, what="the standby leading")
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    assert leader.proc.wait(timeout=T.retry_period + MARGIN_S) == 1
    assert "lost lease" in leader.logs()
    assert holder_pod(control_plane, namespace) == standby.pod
