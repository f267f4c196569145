"""Quarantine through the REAL API server and scheduler, with the SIMULATED kubelet.

A rank that fails on a node the operator can blame (its chip reported Unhealthy, which the
kubelet shows as the node's allocatable dropping below its capacity; the node gone
NotReady, as the node lifecycle controller marks it when its kubelet stops posting) has the
job's next attempt placed elsewhere: the rank pods carry a required node affinity keeping
them off the node, and status.quarantine says which node, why and until when. An application
failure (exit 1) blames nothing. A rank pod stuck Terminating on the lost node (no kubelet
confirms its deletion) is force-deleted, so the restart is not blocked.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from sim.node_agent import NodeAgent, wait_for

from k8s.operator_harness import Jobs, OperatorProcess, job_manifest
from shufflenet_operator import quarantine, render

RESTART_LABEL = render.RESTART_LABEL


def attempt(jobs: Jobs, name: str, restart: int, count: int = 2) -> list[client.V1Pod]:
    """The rank pods of attempt `restart`, once all are scheduled."""

    def placed() -> list[client.V1Pod] | None:
        pods = [
            p
            for p in jobs.pods(name)
            if p.metadata.labels.get(RESTART_LABEL) == str(restart)
            and not p.metadata.deletion_timestamp
        ]
        return pods if len(pods) == count and all(p.spec.node_name for p in pods) else None

    return wait_for(placed, timeout=60, what=f"job {name} attempt {restart} scheduled")


def kept_off(pod: client.V1Pod) -> list[str]:
    """The nodes the pod's required node affinity keeps it off."""
    affinity = pod.spec.affinity
    if affinity is None or affinity.node_affinity is None:
        return []
    required = affinity.node_affinity.required_during_scheduling_ignored_during_execution
    return [
        v
        for term in required.node_selector_terms
        for e in term.match_expressions or []
        if e.key == quarantine.HOSTNAME_LABEL and e.operator == "NotIn"
        for v in e.values
    ]


def blamed(jobs: Jobs, name: str) -> list[dict[str, Any]]:
    return wait_for(
        lambda: jobs.status(name).get("quarantine"), timeout=30, what=f"job {name} quarantine"
    )


def test_a_rank_failing_on_a_node_with_an_unhealthy_chip_restarts_elsewhere(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    # Three nodes of two chips, a job of two: room enough with any one node kept off.
    for _ in range(3):
        node_agent.add_node(npus=2)
    jobs.create(job_manifest("chip", count=2))
    first = attempt(jobs, "chip", 0)
    sick = first[1].spec.node_name
    chip = node_agent.device_ids((jobs.namespace, first[1].metadata.name))[0]
    # Its chip goes Unhealthy: the node keeps one healthy chip, free for a pod, were it not
    # for the quarantine.
    node_agent.set_unhealthy_chips(sick, [chip])
    node_agent.finish((jobs.namespace, first[1].metadata.name), exit_code=137)

    entries = blamed(jobs, "chip")
    assert [(e["node"], e["reason"]) for e in entries] == [(sick, quarantine.DEVICE_UNHEALTHY)]
    assert entries[0]["until"] > jobs.get("chip")["metadata"]["creationTimestamp"]
    second = attempt(jobs, "chip", 1)
    assert all(kept_off(p) == [sick] for p in second)
    assert sick not in {p.spec.node_name for p in second}
    # What a user reads: kubectl get -o yaml shows the entry.
    out = operator.cp.kubectl("get", "snjob", "chip", "-n", jobs.namespace, "-o", "yaml").stdout
    assert f"node: {sick}" in out and "reason: DeviceUnhealthy" in out


def test_an_exit_1_blames_no_node_even_one_with_an_unhealthy_chip(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    for _ in range(2):
        node_agent.add_node(npus=2)
    jobs.create(job_manifest("app", count=2))
    first = attempt(jobs, "app", 0)
    pod = (jobs.namespace, first[1].metadata.name)
    node_agent.set_unhealthy_chips(first[1].spec.node_name, node_agent.device_ids(pod))
    node_agent.finish(pod, exit_code=1)
    status = jobs.wait_phase("app", "Failed", timeout=30)
    assert "quarantine" not in status and "failedNodes" not in status


def test_a_lost_node_is_quarantined_and_its_stuck_terminating_pod_force_deleted(
    node_agent: NodeAgent, start_operator: Any, jobs: Jobs
) -> None:
    # A short --terminating-timeout only for pacing: the default (60 s) is documented.
    start_operator("--terminating-timeout=1")
    for _ in range(3):
        node_agent.add_node(npus=1)
    jobs.create(job_manifest("lost", count=2))
    first = attempt(jobs, "lost", 0)
    lost, victim = first[1].spec.node_name, first[1].metadata.name
    node_agent.lose_node(lost)
    # The taint manager evicts the pods of an unreachable node: a graceful delete, which
    # no kubelet will ever confirm. (A 2 s grace instead of the pod's 30 s, for pacing.)
    jobs.core.delete_namespaced_pod(
        victim, jobs.namespace, body=client.V1DeleteOptions(grace_period_seconds=2)
    )

    entries = blamed(jobs, "lost")
    assert [(e["node"], e["reason"]) for e in entries] == [(lost, quarantine.NODE_NOT_READY)]
    # The stuck pod is force-deleted past its grace and the timeout; the restart's pods
    # are then created, kept off the lost node.
    second = attempt(jobs, "lost", 1)
    assert all(p.metadata.uid != first[1].metadata.uid for p in jobs.pods("lost"))
    assert all(kept_off(p) == [lost] for p in second)
    assert lost not in {p.spec.node_name for p in second}
