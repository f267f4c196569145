"""Jobs whose rank pods cannot start say why, through the REAL API server and scheduler.

What the kubelet posts on a container it cannot start (ErrImagePull, ImagePullBackOff,
CreateContainerConfigError) comes from the SIMULATED kubelet (`NodeAgent.wait`, which posts
the very fields the real kubelet does; tests/k8s/test_real_node.py has a real kubelet fail a
pull); what the scheduler posts (Unschedulable with its message) comes from the real
kube-scheduler, and a scheduler name nobody answers to is simply not served by any. Each
shows on the job within seconds: a condition, `status.waiting` (`kubectl get snjob`'s
Waiting column, and `snjob status`) and a Warning Event; `spec.runPolicy.startTimeoutSeconds`
fails a job whose ranks are not all running in time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from sim.node_agent import NodeAgent, wait_for

from k8s.operator_harness import Jobs, OperatorProcess, job_manifest

# What the kubelet says, word for word, in these cases (its messages; the reasons are what
# is tested).
PULL_ERROR = (
    'rpc error: code = Unknown desc = failed to pull and unpack image "registry.invalid/'
    'shufflenet/trainer:test": failed to resolve reference: dial tcp: lookup registry.invalid: '
    "no such host"
)
BACK_OFF = 'Back-off pulling image "registry.invalid/shufflenet/trainer:test"'
NO_SECRET = 'secret "registry-creds" not found'


@pytest.fixture
def kubelet(core_v1: client.CoreV1Api) -> Iterator[NodeAgent]:
    """A SIMULATED kubelet that leaves pods it admits unstarted, for `wait()` or `start()`."""
    with NodeAgent(core_v1, name=f"sim{uuid.uuid4().hex[:6]}", auto_start=False) as agent:
        yield agent


def waiting(jobs: Jobs, name: str, reason: str, timeout: float = 10) -> dict[str, Any]:
    """The job's status once its Waiting reason is `reason`."""
    return wait_for(
        lambda: (s := jobs.status(name)).get("waiting", {}).get("reason") == reason and s,
        timeout=timeout,
        interval=0.05,
        what=f"job {name} waiting for {reason}",
    )


def warnings(jobs: Jobs, name: str) -> list[tuple[str, str]]:
    return sorted((e.reason, e.message) for e in jobs.events(name) if e.type == "Warning")


def kubectl_get(operator: OperatorProcess, jobs: Jobs, name: str) -> dict[str, str]:
    """`kubectl get snjob NAME` as a user reads it: each column's text under its header."""
    out = operator.cp.kubectl("get", "snjob", name, "-n", jobs.namespace).stdout
    header, row = out.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def test_the_kubelets_reasons_show_on_the_job_within_seconds(
    kubelet: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    kubelet.add_node(npus=8)
    jobs.create(job_manifest("pull", count=2))
    wait_for(lambda: len(jobs.pods("pull")) == 2, what="the rank pods")
    pods = [(jobs.namespace, f"pull-rank-{i}") for i in range(2)]

    posted = time.monotonic()
    for pod in pods:
        kubelet.wait(pod, "ErrImagePull", PULL_ERROR)
    status = waiting(jobs, "pull", "ErrImagePull")
    shown = time.monotonic() - posted
    print(f"simulated kubelet posted ErrImagePull -> job status showed it in {shown:.2f}s")
    assert status["phase"] == "Pending"
    # Both pods' (the second may come a reconcile later).
    expected = f"rank 0 pod pull-rank-0 container trainer: {PULL_ERROR} (1 more rank pods alike)"
    status = wait_for(
        lambda: (s := jobs.status("pull"))["waiting"]["message"] == expected and s,
        what="both rank pods counted",
    )
    running = jobs.condition("pull", "Running")
    assert (running["status"], running["reason"]) == ("False", "ErrImagePull")
    assert running["message"] == f"0 of 2 ranks running; {status['waiting']['message']}"
    ((reason, message),) = wait_for(lambda: warnings(jobs, "pull"), what="the Event")
    assert reason == "ErrImagePull"
    assert message.startswith(f"rank 0 pod pull-rank-0 container trainer: {PULL_ERROR}")
    # The printer column, as the API server 1.20 renders it for kubectl.
    assert kubectl_get(operator, jobs, "pull")["WAITING"] == "ErrImagePull"
    # `snjob status` says it on a line of its own.
    snjob = [sys.executable, "-m", "shufflenet_trainer.snjob", "status", "-n", jobs.namespace]
    out = subprocess.run(
        [*snjob, "pull"], env=operator.cp.env(), capture_output=True, text=True, timeout=60
    ).stdout
    assert f"waiting:  ErrImagePull: {status['waiting']['message']}" in out.splitlines(), out

    # The kubelet backs off between pulls: shown, but the same trouble (no second Event).
    for pod in pods:
        kubelet.wait(pod, "ImagePullBackOff", BACK_OFF)
    waiting(jobs, "pull", "ImagePullBackOff")
    # Another trouble: the image is there, a Secret the container names is not.
    for pod in pods:
        kubelet.wait(pod, "CreateContainerConfigError", NO_SECRET)
    status = waiting(jobs, "pull", "CreateContainerConfigError")
    wait_for(
        lambda: (
            [r for r, _ in warnings(jobs, "pull")] == ["CreateContainerConfigError", "ErrImagePull"]
        ),
        what="the CreateContainerConfigError Event",
    )
    assert NO_SECRET in jobs.condition("pull", "Running")["message"]

    # Fixed: the ranks run, nothing waits, the column is empty.
    for pod in pods:
        kubelet.start(pod)
    status = jobs.wait_phase("pull", "Running", timeout=10)
    assert "waiting" not in status
    assert kubectl_get(operator, jobs, "pull")["WAITING"] in ("", "<none>")
    assert jobs.condition("pull", "Running")["reason"] == "AllRanksRunning"


def test_the_schedulers_message_shows_until_a_node_fits(
    kubelet: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    kubelet.add_node(npus=1)
    jobs.create(job_manifest("big", count=2, devices={"type": "npu", "count": 2, "perPod": 2}))
    status = waiting(jobs, "big", "Unschedulable", timeout=30)
    message = status["waiting"]["message"]
    # The real kube-scheduler's FitError, as it posted it on the pod.
    assert message.startswith("rank 0 pod big-node-0: 0/"), message
    assert "Insufficient huawei.com/Ascend910" in message
    scheduled = jobs.condition("big", "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert scheduled["message"] == f"0 of 2 rank pods scheduled; {message}"
    wait_for(
        lambda: [r for r, _ in warnings(jobs, "big")] == ["Unschedulable"],
        what="the Unschedulable Event",
    )
    # A node that fits: scheduled, nothing waits.
    kubelet.add_node(npus=8)
    wait_for(
        lambda: jobs.condition("big", "Scheduled").get("status") == "True",
        timeout=60,
        what="scheduled on the new node",
    )
    kubelet.start((jobs.namespace, "big-node-0"))
    assert "waiting" not in jobs.wait_phase("big", "Running", timeout=10)


def test_a_scheduler_nobody_runs_is_named_after_the_operators_wait(
    kubelet: NodeAgent, start_operator: Callable[..., OperatorProcess], jobs: Jobs
) -> None:
    start_operator("--scheduler-wait", "3")
    kubelet.add_node(npus=8)
    spec = {"scheduling": {"gang": False, "schedulerName": "no-such-scheduler"}}
    jobs.create(job_manifest("lost", count=1, **spec))
    # At first, as for any new pod: waiting for the scheduler.
    wait_for(
        lambda: jobs.condition("lost", "Scheduled").get("reason") == "WaitingForScheduler",
        what="the Scheduled condition",
    )
    assert "waiting" not in jobs.status("lost")
    status = waiting(jobs, "lost", "SchedulerNotResponding", timeout=15)
    assert 'schedulerName "no-such-scheduler"' in status["waiting"]["message"]
    assert jobs.condition("lost", "Scheduled")["reason"] == "SchedulerNotResponding"


def test_the_start_timeout_fails_the_job_and_removes_its_pods(
    kubelet: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    kubelet.add_node(npus=8)
    jobs.create(job_manifest("slow", count=2, runPolicy={"startTimeoutSeconds": 5}))
    wait_for(lambda: len(jobs.pods("slow")) == 2, what="the rank pods")
    kubelet.wait((jobs.namespace, "slow-rank-1"), "ErrImagePull", PULL_ERROR)
    kubelet.start((jobs.namespace, "slow-rank-0"))
    status = jobs.wait_phase("slow", "Failed", timeout=20)
    (failed,) = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert failed["reason"] == "StartTimeoutExceeded"
    assert failed["message"] == (
        "spec.runPolicy.startTimeoutSeconds: 1 of 2 ranks running 5s after the rank pods were "
        f"created; ErrImagePull: rank 1 pod slow-rank-1 container trainer: {PULL_ERROR}"
    )
    assert "waiting" not in status
    # As after any failure (cleanPodPolicy Running): the pods that had not ended go.
    wait_for(lambda: not jobs.pods("slow"), timeout=30, what="the rank pods removed")
    assert ("StartTimeoutExceeded", failed["message"]) in warnings(jobs, "slow")
