"""Rank pods in a namespace with a ResourceQuota on requests and no LimitRange, through the
REAL API server's ResourceQuota admission (and the real quota controller's usage).

Such a namespace refuses every pod that does not request CPU and memory: the rank pods
request both (the operator's --rank-resources, per device type), so they are admitted,
Burstable, and count against the quota. Asking for more than the quota leaves the job
waiting with a condition naming the quota, until the quota grows.

No kubelet is needed: the tests look at what the API server admits and holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.utils import parse_quantity
from sim.node_agent import wait_for

from k8s.operator_harness import Jobs, OperatorProcess, job_manifest
from shufflenet_operator import render

QUOTA = "compute"


def set_quota(core: client.CoreV1Api, namespace: str, cpu: str, memory: str) -> None:
    """The namespace's requests quota, once the quota controller has counted against it (the
    admission plugin refuses pods while a quota has no usage yet)."""
    hard = {"requests.cpu": cpu, "requests.memory": memory}
    body = {"metadata": {"name": QUOTA}, "spec": {"hard": hard}}
    try:
        core.create_namespaced_resource_quota(namespace, body)
    except client.ApiException as e:
        if e.status != 409:
            raise
        core.patch_namespaced_resource_quota(QUOTA, namespace, body)

    def counted() -> bool:
        status = core.read_namespaced_resource_quota(QUOTA, namespace).status
        return bool(status and status.used) and same_quantities(status.hard or {}, hard)

    wait_for(counted, timeout=60, what=f"quota {QUOTA} counted")


def same_quantities(got: dict[str, str], want: dict[str, str]) -> bool:
    return got.keys() == want.keys() and all(
        parse_quantity(got[k]) == parse_quantity(v) for k, v in want.items()
    )


def used(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    return dict(core.read_namespaced_resource_quota(QUOTA, namespace).status.used or {})


def trainer_requests(pod: client.V1Pod) -> dict[str, Any]:
    (c,) = [c for c in pod.spec.containers if c.name == render.CONTAINER]
    return dict(c.resources.requests or {})


def test_a_requests_quota_without_a_limit_range_admits_the_rank_pods(
    operator: OperatorProcess, jobs: Jobs
) -> None:
    core, ns = jobs.core, jobs.namespace
    set_quota(core, ns, cpu="4", memory="8Gi")
    assert core.list_namespaced_limit_range(ns).items == []
    # What the quota does to a pod that requests nothing: refused.
    bare = {
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(ns, bare)
    assert refused.value.status == 403 and "must specify" in str(refused.value.body)

    jobs.create(job_manifest("quota", device="cpu", count=2))
    wait_for(
        lambda: jobs.condition("quota", "Created").get("status") == "True",
        what="the rank pods created",
    )
    pods = jobs.pods("quota")
    assert len(pods) == 2
    for pod in pods:
        # The operator's defaults for cpu ranks; Burstable, not BestEffort.
        assert trainer_requests(pod) == {"cpu": "250m", "memory": "1Gi"}
        assert pod.status.qos_class == "Burstable"
        (shm,) = [v for v in pod.spec.volumes if v.name == render.SHM_VOLUME]
        assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "1Gi"
    # They count against the quota.
    wait_for(
        lambda: same_quantities(used(core, ns), {"requests.cpu": "500m", "requests.memory": "2Gi"}),
        what="the quota's usage",
    )


def test_the_operators_setting_sizes_the_requests_and_a_quota_too_small_waits(
    start_operator: Callable[..., OperatorProcess], jobs: Jobs
) -> None:
    core, ns = jobs.core, jobs.namespace
    set_quota(core, ns, cpu="4", memory="8Gi")
    start_operator("--rank-resources", "cpu=cpu:3,memory:2Gi")
    jobs.create(job_manifest("big", device="cpu", count=2))
    # One pod of 3 CPUs fits the quota of 4, the second does not: the job waits, saying so.
    created = wait_for(
        lambda: (c := jobs.condition("big", "Created")).get("reason") == "PodsRefused" and c,
        what="the Created condition",
    )
    assert created["status"] == "False" and "exceeded quota" in created["message"]
    assert jobs.status("big")["phase"] == "Pending"
    assert [trainer_requests(p) for p in jobs.pods("big")] == [{"cpu": "3", "memory": "2Gi"}]

    # A quota large enough: the job goes on without being touched.
    set_quota(core, ns, cpu="8", memory="8Gi")
    wait_for(
        lambda: jobs.condition("big", "Created").get("status") == "True",
        timeout=60,
        what="the rank pods created once the quota grew",
    )
    assert len(jobs.pods("big")) == 2
    wait_for(
        lambda: same_quantities(used(core, ns), {"requests.cpu": "6", "requests.memory": "4Gi"}),
        what="the quota's usage",
    )
