"""Operator: why rank pods wait (status.pod_waiting, job_waiting) and the start timeout, as
policy.plan reports them: conditions, status.waiting, Events; on an in-memory cluster."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_operator_policy import T0, Cluster

from shufflenet_operator import policy
from shufflenet_operator import status as st

PULL_ERROR = (
    'rpc error: code = Unknown desc = failed to pull and unpack image "127.0.0.1:1/t:1": '
    "dial tcp 127.0.0.1:1: connect: connection refused"
)
FIT_ERROR = "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910."


def pod(
    *,
    scheduled: bool = True,
    waiting: tuple[str, str] | None = None,
    init: bool = False,
    pod_scheduled: dict[str, str] | None = None,
    age: float = 0,
) -> dict[str, Any]:
    """A Pending rank pod as the API server holds it."""
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    if waiting:
        key = "initContainerStatuses" if init else "containerStatuses"
        reason, message = waiting
        state = {"waiting": {"reason": reason, "message": message}}
        status[key] = [{"name": "trainer", "state": state}]
    if pod_scheduled:
        status["conditions"].append({"type": "PodScheduled", **pod_scheduled})
    created = st.format_time(T0 - timedelta(seconds=age))
    return {
        "metadata": {"name": "sn-rank-0", "creationTimestamp": created},
        "spec": {"nodeName": "node-0"} if scheduled else {"schedulerName": "volcano"},
        "status": status,
    }


@pytest.mark.parametrize(
    "reason",
    [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    ],
)
def test_a_container_waiting_reason_is_the_kubelets_trouble(reason: str) -> None:
    w = st.pod_waiting(pod(waiting=(reason, "what the kubelet said")), 0, T0, 60)
    assert w == st.Waiting(
        reason, "rank 0 pod sn-rank-0 container trainer: what the kubelet said", False
    )
    # An init container's too (a podTemplate may add one).
    assert st.pod_waiting(pod(waiting=(reason, "x"), init=True), 0, T0, 60).reason == reason


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing"])
def test_a_container_being_created_is_no_trouble(reason: str) -> None:
    assert st.pod_waiting(pod(waiting=(reason, "")), 0, T0, 60) is None


def test_the_schedulers_condition_is_reported_with_its_message() -> None:
    unschedulable = {"status": "False", "reason": "Unschedulable", "message": FIT_ERROR}
    w = st.pod_waiting(pod(scheduled=False, pod_scheduled=unschedulable), 0, T0, 60)
    assert w == st.Waiting("Unschedulable", f"rank 0 pod sn-rank-0: {FIT_ERROR}", True)
    # Volcano's Schedulable: about to be bound, no trouble.
    soon = {"status": "False", "reason": "Schedulable", "message": "x"}
    assert st.pod_waiting(pod(scheduled=False, pod_scheduled=soon), 0, T0, 60) is None


def test_a_pod_no_scheduler_looks_at_is_reported_after_the_wait() -> None:
    assert st.pod_waiting(pod(scheduled=False, age=59), 0, T0, 60) is None
    assert st.scheduler_wait_left([pod(scheduled=False, age=59)], T0, 60) == 1
    w = st.pod_waiting(pod(scheduled=False, age=60), 0, T0, 60)
    assert w is not None and w.reason == "SchedulerNotResponding" and w.scheduling
    assert 'schedulerName "volcano"' in w.message and "spec.scheduling.schedulerName" in w.message
    assert st.scheduler_wait_left([pod(scheduled=False, age=60)], T0, 60) is None


def test_a_running_or_ended_pod_waits_for_nothing() -> None:
    p = pod(waiting=("ErrImagePull", "x"))
    for phase in ("Running", "Succeeded", "Failed"):
        p["status"]["phase"] = phase
        assert st.pod_waiting(p, 0, T0, 60) is None


def test_job_waiting_names_the_lowest_rank_and_counts_the_others() -> None:
    pods = {i: pod(waiting=("ErrImagePull", f"e{i}")) for i in (3, 1, 2)}
    pods[1]["metadata"]["name"] = "sn-rank-1"
    kubelet, scheduler = st.job_waiting(pods, T0, 60)
    assert scheduler is None and kubelet is not None
    assert kubelet.status() == {
        "reason": "ErrImagePull",
        "message": "rank 1 pod sn-rank-1 container trainer: e1 (2 more rank pods alike)",
    }


def test_waiting_events_come_with_a_new_trouble_not_a_new_message() -> None:
    pull = {"reason": "ErrImagePull", "message": "a"}
    backoff = {"reason": "ImagePullBackOff", "message": "b"}
    (event,) = st.waiting_events(None, pull)
    assert (event.type, event.reason, event.message) == ("Warning", "ErrImagePull", "a")
    assert st.waiting_events(pull, {**pull, "message": "c"}) == []
    # The kubelet alternates these while it retries the pull: one trouble.
    assert st.waiting_events(pull, backoff) == [] and st.waiting_events(backoff, pull) == []
    config = {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}
    assert [e.reason for e in st.waiting_events(pull, config)] == ["CreateContainerConfigError"]
    assert st.waiting_events(pull, None) == []


def created(**spec: Any) -> Cluster:
    c = Cluster(devices={"type": "cpu", "count": 2}, training={"batchSize": 16}, **spec)
    c.reconcile()
    assert len(c.pods) == 2
    return c


def kubelet_waits(c: Cluster, reason: str, message: str, ranks: tuple[int, ...] = (0, 1)) -> None:
    for rank in ranks:
        p = c.pods[f"sn-rank-{rank}"]
        p["spec"]["nodeName"] = "node-0"
        state = {"waiting": {"reason": reason, "message": message}}
        p["status"] = {
            "phase": "Pending",
            "containerStatuses": [{"name": "trainer", "state": state}],
        }


def test_an_image_pull_error_shows_in_running_waiting_and_one_event() -> None:
    c = created()
    kubelet_waits(c, "ErrImagePull", PULL_ERROR)
    plan = c.reconcile()
    running = c.cond("Running")
    assert (running["status"], running["reason"]) == ("False", "ErrImagePull")
    assert running["message"] == (
        f"0 of 2 ranks running; rank 0 pod sn-rank-0 container trainer: {PULL_ERROR} "
        "(1 more rank pods alike)"
    )
    detail = running["message"].split("; ", 1)[1]
    assert c.status["waiting"] == {"reason": "ErrImagePull", "message": detail}
    assert c.status["phase"] == "Pending"
    assert [(e.type, e.reason) for e in plan.events] == [
        ("Normal", "AllRanksScheduled"),
        ("Warning", "ErrImagePull"),
    ]

    # The back-off in between pulls: the same trouble, no second Event.
    kubelet_waits(c, "ImagePullBackOff", 'Back-off pulling image "127.0.0.1:1/t:1"')
    plan = c.reconcile(5)
    assert c.status["waiting"]["reason"] == "ImagePullBackOff" and plan.events == []

    # Pulled at last: running, nothing waits.
    c.run_all()
    plan = c.reconcile(5)
    assert "waiting" not in c.status and c.cond("Running")["status"] == "True"
    assert [e.reason for e in plan.events] == ["AllRanksRunning"]


def test_unschedulable_shows_in_scheduled_with_the_schedulers_message() -> None:
    c = created()
    for p in c.pods.values():
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        p["status"] = {"phase": "Pending", "conditions": [{**cond, "message": FIT_ERROR}]}
    plan = c.reconcile()
    scheduled = c.cond("Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert scheduled["message"] == (
        f"0 of 2 rank pods scheduled; rank 0 pod sn-rank-0: {FIT_ERROR} (1 more rank pods alike)"
    )
    assert c.status["waiting"]["reason"] == "Unschedulable"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Unschedulable")]


def test_pods_no_scheduler_looks_at_are_reported_after_the_wait_it_requeues_for() -> None:
    c = created()
    for p in c.pods.values():
        p["metadata"]["creationTimestamp"] = st.format_time(c.now)
    plan = c.reconcile(10)
    assert c.cond("Scheduled")["reason"] == "WaitingForScheduler" and "waiting" not in c.status
    assert plan.requeue_after == pytest.approx(SETTINGS_WAIT - 10)
    plan = c.reconcile(SETTINGS_WAIT - 10)
    assert c.cond("Scheduled")["reason"] == "SchedulerNotResponding"
    assert c.status["waiting"]["reason"] == "SchedulerNotResponding"
    assert [e.reason for e in plan.events] == ["SchedulerNotResponding"]


SETTINGS_WAIT = policy.Settings().scheduler_wait_seconds


def test_the_start_timeout_fails_the_job_naming_the_field_and_why() -> None:
    c = created(runPolicy={"startTimeoutSeconds": 300})
    kubelet_waits(c, "CreateContainerConfigError", 'secret "creds" not found')
    plan = c.reconcile(100)
    assert plan.requeue_after == pytest.approx(200)
    assert c.status["phase"] == "Pending"
    plan = c.reconcile(200)
    failed = c.cond("Failed")
    assert c.status["phase"] == "Failed" and failed["reason"] == "StartTimeoutExceeded"
    assert failed["message"].startswith(
        "spec.runPolicy.startTimeoutSeconds: 0 of 2 ranks running 300s after the rank pods "
        "were created; CreateContainerConfigError: rank 0 pod sn-rank-0 container trainer: "
        'secret "creds" not found'
    )
    # The waiting pods go as after any failure (cleanPodPolicy Running: the pending ones).
    assert sorted(name for name, _ in plan.delete_pods) == ["sn-rank-0", "sn-rank-1"]
    assert "waiting" not in c.status
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "StartTimeoutExceeded")]


def test_the_start_timeout_counts_each_attempt_and_stops_once_all_run() -> None:
    c = created(runPolicy={"startTimeoutSeconds": 300, "backoffLimit": 2})
    c.schedule(annotate=False)
    c.run_all()
    c.reconcile(250)
    assert c.status["phase"] == "Running"
    c.reconcile(100)
    assert c.status["phase"] == "Running"  # started: the timeout is done with
    # A restart: the new attempt's pods get the whole timeout again.
    c.finish(1, 143)
    c.reconcile()
    assert c.status["phase"] == "Restarting"
    c.reconcile(60)
    assert c.cond("Created")["status"] == "True" and len(c.pods) == 2
    c.reconcile(299)
    assert c.status["phase"] == "Pending"
    c.reconcile(1)
    assert c.status["phase"] == "Failed" and c.cond("Failed")["reason"] == "StartTimeoutExceeded"


def test_no_start_timeout_by_default() -> None:
    c = created()
    assert "startTimeoutSeconds" not in c.job["spec"].get("runPolicy", {})
    c.reconcile(86400)
    assert c.status["phase"] == "Pending"
