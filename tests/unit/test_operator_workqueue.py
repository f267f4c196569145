"""Operator: the work queue (dedup, no concurrent processing of a key, delays) and metrics."""

from __future__ import annotations

from shufflenet_operator import metrics
from shufflenet_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_keys_are_deduplicated_and_requeued_when_added_while_processing() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    key = q.get(timeout=0)
    assert key == "a"
    q.add("a")  # changed again while being processed: runs once more, after done()
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_add_after_keeps_the_earliest_and_fires_when_due() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 5)
    q.add_after("a", 30)
    assert q.get(timeout=0) is None
    clock.t = 5
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.t = 100
    assert q.get(timeout=0) is None  # the superseded entries do not fire again
    q.close()
    assert q.get() is None


def test_job_phase_gauge_and_restart_counter() -> None:
    phases = metrics.JobPhases()
    phases.set("ns-m", "a", "Running")
    phases.set("ns-m", "b", "Running")
    phases.set("ns-m", "b", "Failed")
    value = metrics.REGISTRY.get_sample_value
    assert value("shufflenet_operator_jobs", {"namespace": "ns-m", "phase": "Running"}) == 1
    assert value("shufflenet_operator_jobs", {"namespace": "ns-m", "phase": "Failed"}) == 1
    assert value("shufflenet_operator_jobs", {"namespace": "ns-m", "phase": "Pending"}) == 0
    labels = {"namespace": "ns-m", "job": "a"}
    assert value("shufflenet_operator_job_restarts_total", labels) == 0
    phases.forget("ns-m", "a")
    assert value("shufflenet_operator_jobs", {"namespace": "ns-m", "phase": "Running"}) == 0
    assert value("shufflenet_operator_job_restarts_total", labels) is None
