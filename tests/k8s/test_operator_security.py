"""What a job may ask for, and what the operator may touch, against the REAL API server.

The operator runs as its own process (as in its Deployment), started here with each
--job-policy level: a job asking for more than the level allows fails InvalidSpec naming
the field and the setting, and no pod is created; the same job runs under a looser level.
The rank pods the API server stores carry the locked-down security context. An object that
has the name of a job's child but is not the job's (no owner reference to its uid) is never
adopted or changed: the job waits with a condition naming it, and starts once it is gone.

No kubelet is needed: the tests look at what the API server holds, not at running pods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from sim.node_agent import wait_for

from k8s.operator_harness import RESYNC_S, Jobs, OperatorProcess, job_manifest

HOST_NETWORK = {"spec": {"hostNetwork": True}}
# A sidecar without a security context: baseline takes it, restricted does not.
SIDECAR = {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}


def _refused(jobs: Jobs, name: str, field: str, level: str) -> None:
    jobs.wait_phase(name, "Failed")
    failed = jobs.condition(name, "Failed")
    assert failed["reason"] == "InvalidSpec", failed
    message = failed["message"]
    assert message.startswith(f'{field}: refused by the operator\'s job policy "{level}"'), message
    assert "--job-policy" in message and "operator.jobPolicy" in message
    assert jobs.pods(name) == []


def _created(jobs: Jobs, name: str) -> list[client.V1Pod]:
    wait_for(
        lambda: jobs.condition(name, "Created").get("status") == "True",
        what=f"job {name}'s pods created",
    )
    pods = jobs.pods(name)
    assert len(pods) == 2
    return pods


@pytest.mark.parametrize("level", ["restricted", "baseline", "privileged"])
def test_the_job_policy_refuses_what_its_level_does_not_allow(
    start_operator: Callable[..., OperatorProcess], jobs: Jobs, level: str
) -> None:
    start_operator("--job-policy", level)
    jobs.create(job_manifest("hostnet", device="cpu", count=2, podTemplate=HOST_NETWORK))
    jobs.create(job_manifest("sidecar", device="cpu", count=2, podTemplate=SIDECAR))
    jobs.create(job_manifest("plain", device="cpu", count=2))

    if level == "privileged":
        assert all(p.spec.host_network for p in _created(jobs, "hostnet"))
    else:
        _refused(jobs, "hostnet", "spec.podTemplate.spec.hostNetwork", level)
    if level == "restricted":
        field = "spec.podTemplate.spec.containers[sidecar].securityContext.allowPrivilegeEscalation"
        _refused(jobs, "sidecar", field, level)
    else:
        _created(jobs, "sidecar")
    # Every level runs a job that leaves the pods as the operator makes them.
    for pod in _created(jobs, "plain"):
        assert pod.spec.automount_service_account_token is False
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.security_context.run_as_user is None  # the image's own user
        assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        (trainer,) = pod.spec.containers
        context = trainer.security_context
        assert context.allow_privilege_escalation is False
        assert context.read_only_root_filesystem is True
        assert context.capabilities.drop == ["ALL"]
        # No ServiceAccount token volume: the admission plugin honoured the opt-out.
        assert not [v for v in pod.spec.volumes if v.name.startswith("kube-api-access")]
        assert not [v for v in pod.spec.volumes if v.secret is not None]


def test_the_default_policy_refuses_a_hostpath_data_volume_naming_the_jobs_field(
    start_operator: Callable[..., OperatorProcess], jobs: Jobs
) -> None:
    start_operator()  # no --job-policy: baseline
    manifest = job_manifest("hostpath", device="cpu", count=2)
    manifest["spec"]["data"] = {"volume": {"hostPath": {"path": "/"}}, "path": "/data"}
    jobs.create(manifest)
    _refused(jobs, "hostpath", "spec.data.volume.hostPath", "baseline")
    (failed,) = _events(jobs, "hostpath", "InvalidSpec")
    assert failed.type == "Warning"


def _wait_not_owned(jobs: Jobs, name: str, kind: str, child: str) -> dict[str, Any]:
    created = wait_for(
        lambda: (c := jobs.condition(name, "Created")).get("reason") == "ChildNotOwned" and c,
        what=f"job {name}'s ChildNotOwned condition",
    )
    assert created["status"] == "False"
    assert created["message"].startswith(f"{kind} {child} already exists and is not this job's")
    assert "delete it or rename the job" in created["message"]
    assert jobs.status(name)["phase"] == "Pending"
    (warning,) = _events(jobs, name, "ChildNotOwned")
    assert warning.type == "Warning" and warning.message == created["message"]
    return created


def _events(jobs: Jobs, name: str, reason: str) -> list[client.CoreV1Event]:
    """The job's Events of `reason`, once there is one (posted after the status)."""
    return wait_for(
        lambda: [e for e in jobs.events(name) if e.reason == reason] or None,
        what=f"a {reason} Event on job {name}",
    )


def test_a_service_of_the_jobs_name_is_not_adopted_and_the_job_waits_for_the_name(
    start_operator: Callable[..., OperatorProcess], jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    ns = jobs.namespace
    mine = {
        "metadata": {"name": "taken", "labels": {"owner": "someone-else"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"name": "http", "port": 80}]},
    }
    before = core_v1.create_namespaced_service(ns, mine)
    start_operator()
    jobs.create(job_manifest("taken", device="cpu", count=2))
    _wait_not_owned(jobs, "taken", "Service", "taken")
    # Looked at again at every resync, and never touched: not patched, not adopted.
    time.sleep(2 * RESYNC_S)
    after = core_v1.read_namespaced_service("taken", ns)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.owner_references is None
    assert after.spec.selector == {"app": "theirs"}
    assert jobs.pods("taken") == []
    assert len([e for e in jobs.events("taken") if e.reason == "ChildNotOwned"]) == 1

    # Its owner deletes it: the job gets its own Service and starts.
    # (A 1.20 API server answers a Service's deletion with a Status, which this client
    # cannot read as the Service it expects: the answer is not parsed.)
    core_v1.delete_namespaced_service("taken", ns, _preload_content=False)
    _created(jobs, "taken")
    ours = core_v1.read_namespaced_service("taken", ns)
    assert ours.metadata.owner_references[0].uid == jobs.get("taken")["metadata"]["uid"]


def test_a_rank_table_configmap_of_another_job_is_never_written(
    start_operator: Callable[..., OperatorProcess], jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    ns = jobs.namespace
    mine = {"metadata": {"name": "npu2-ranktable"}, "data": {"hccl.json": "mine"}}
    before = core_v1.create_namespaced_config_map(ns, mine)
    start_operator()
    jobs.create(job_manifest("npu2", count=2))
    _wait_not_owned(jobs, "npu2", "ConfigMap", "npu2-ranktable")
    after = core_v1.read_namespaced_config_map("npu2-ranktable", ns)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.data == {"hccl.json": "mine"} and after.metadata.owner_references is None
    assert jobs.pods("npu2") == []
