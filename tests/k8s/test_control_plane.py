"""The test control plane is real, and the SIMULATED kubelet / device plugin behaves.

Real: etcd, kube-apiserver (validation, RBAC, admission), kube-controller-manager (service
accounts, garbage collector), kube-scheduler. Simulated (tests/sim): kubelet, the Ascend
device plugin, the NPUs.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import uuid
from collections import Counter
from typing import Any

import pytest
import yaml
from kubernetes import client
from sim.node_agent import ASCEND_910_ANNOTATION, NPU_RESOURCE, NodeAgent, wait_for

from k8s.cluster import REPO, ControlPlane
from k8s.operator_harness import install_crd

CRD_PATH = REPO / "manifests" / "crd" / "shufflenettrainingjobs.yaml"
EXAMPLES = REPO / "manifests" / "examples"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def npu_pod(name: str, npus: int, restart_policy: str = "Never") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "npu-test"}},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [
                {
                    "name": "main",
                    "image": "trainer:test",
                    "resources": {"limits": {NPU_RESOURCE: str(npus)}},
                }
            ],
        },
    }


def get_pod(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    return core.read_namespaced_pod(name, ns)


def gone(read: Any) -> bool:
    try:
        read()
    except client.ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_server_is_v1_20_and_authenticated(k8s_api: client.ApiClient) -> None:
    info = client.VersionApi(k8s_api).get_code()
    assert info.git_version == "v1.20.2"
    # RBAC is on: an unknown token is refused, not treated as anonymous admin.
    cfg = client.Configuration(
        host=k8s_api.configuration.host,
        api_key={"authorization": "Bearer not-a-valid-token"},
    )
    cfg.ssl_ca_cert = k8s_api.configuration.ssl_ca_cert
    with client.ApiClient(cfg) as anon, pytest.raises(client.ApiException) as err:
        client.CoreV1Api(anon).list_namespace()
    assert err.value.status == 401


def test_default_service_account(core_v1: client.CoreV1Api, namespace: str) -> None:
    # Created by the real controller manager, with its token Secret (1.20's token controller).
    sa = core_v1.read_namespaced_service_account("default", namespace)
    secret = core_v1.read_namespaced_secret(sa.secrets[0].name, namespace)
    assert secret.type == "kubernetes.io/service-account-token"
    assert {"token", "ca.crt", "namespace"} <= set(secret.data)
    # Its token is signed with the service-account key (accepted: 403, not 401), and RBAC
    # grants a bare service account nothing.
    cfg = client.Configuration(
        host=core_v1.api_client.configuration.host,
        api_key={"authorization": "Bearer " + base64.b64decode(secret.data["token"]).decode()},
    )
    cfg.ssl_ca_cert = core_v1.api_client.configuration.ssl_ca_cert
    with client.ApiClient(cfg) as sa_client, pytest.raises(client.ApiException) as err:
        client.CoreV1Api(sa_client).list_namespaced_pod(namespace)
    assert err.value.status == 403


def test_kubectl_talks_to_the_cluster(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "namespace", "kube-system", "-o", "name").stdout
    assert out.strip() == "namespace/kube-system"


def test_fake_nodes_are_ready_with_npus(core_v1: client.CoreV1Api, node_agent: NodeAgent) -> None:
    sim = node_agent.add_node(npus=8, gpus=2)
    node = core_v1.read_node(sim.name)
    assert node.status.allocatable[NPU_RESOURCE] == "8"
    assert node.status.allocatable["nvidia.com/gpu"] == "2"
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [sim.host_ip]
    assert ipaddress.ip_address(sim.host_ip) in LOOPBACK
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready[0].status == "True"
    # The API server tainted the new node not-ready; the simulated kubelet cleared it.
    assert not node.spec.taints


def test_scheduler_places_pods_by_npu_capacity(
    core_v1: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    nodes = {node_agent.add_node(npus=8).name for _ in range(2)}
    names = [f"rank-{i}" for i in range(10)]
    for name in names:
        core_v1.create_namespaced_pod(namespace, npu_pod(name, npus=2))

    def placement() -> tuple[list[client.V1Pod], list[client.V1Pod]] | None:
        pods = core_v1.list_namespaced_pod(namespace).items
        bound = [p for p in pods if p.spec.node_name]
        unschedulable = [
            p
            for p in pods
            if any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for c in p.status.conditions or []
            )
        ]
        running = [p for p in bound if p.status.phase == "Running"]
        if len(running) == 8 and len(unschedulable) == 2:
            return bound, unschedulable
        return None

    bound, unschedulable = wait_for(placement, timeout=60, what="8 placed, 2 unschedulable")
    assert len(bound) == 8
    assert Counter(p.spec.node_name for p in bound) == {n: 4 for n in nodes}
    assert all(
        "Insufficient huawei.com/Ascend910" in p.status.conditions[0].message for p in unschedulable
    )

    # The device plugin's annotation: 2 chips each, no chip given twice on a node.
    used: dict[str, set[str]] = {n: set() for n in nodes}
    for p in bound:
        cfg = json.loads(p.metadata.annotations[ASCEND_910_ANNOTATION])
        sim = node_agent.nodes[p.spec.node_name]
        assert cfg["pod_name"] == p.metadata.name
        assert cfg["host_ip"] == cfg["server_id"] == sim.host_ip == p.status.host_ip
        ids = {d["device_id"] for d in cfg["devices"]}
        assert len(ids) == 2
        assert not ids & used[p.spec.node_name]
        used[p.spec.node_name] |= ids
        for d in cfg["devices"]:
            assert ipaddress.ip_address(d["device_ip"]) in LOOPBACK
        assert ipaddress.ip_address(p.status.pod_ip) in LOOPBACK
    assert all(ids == {str(i) for i in range(8)} for ids in used.values())
    assert len({p.status.pod_ip for p in bound}) == 8

    # Two ranks end (one fails); once they are deleted the real scheduler places the two
    # waiting pods on the chips that were freed.
    done, failed = bound[0], bound[1]
    node_agent.finish(done, exit_code=0)
    node_agent.finish(failed, exit_code=3)
    assert get_pod(core_v1, namespace, done.metadata.name).status.phase == "Succeeded"
    failed_now = get_pod(core_v1, namespace, failed.metadata.name)
    assert failed_now.status.phase == "Failed"
    assert failed_now.status.container_statuses[0].state.terminated.exit_code == 3
    freed = {
        (p.spec.node_name, d["device_id"])
        for p in (done, failed)
        for d in json.loads(p.metadata.annotations[ASCEND_910_ANNOTATION])["devices"]
    }
    for p in (done, failed):
        core_v1.delete_namespaced_pod(p.metadata.name, namespace)
    waiting = [p.metadata.name for p in unschedulable]

    def placed_again() -> list[client.V1Pod] | None:
        pods = [get_pod(core_v1, namespace, n) for n in waiting]
        ok = all(
            p.status.phase == "Running" and ASCEND_910_ANNOTATION in (p.metadata.annotations or {})
            for p in pods
        )
        return pods if ok else None

    again = wait_for(placed_again, timeout=90, what="the waiting pods to run")
    reused = {
        (p.spec.node_name, d["device_id"])
        for p in again
        for d in json.loads(p.metadata.annotations[ASCEND_910_ANNOTATION])["devices"]
    }
    assert reused == freed


def test_pod_lifecycle_follows_restart_policy(
    core_v1: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    node_agent.add_node(npus=8)
    core_v1.create_namespaced_pod(namespace, npu_pod("never", 1, "Never"))
    core_v1.create_namespaced_pod(namespace, npu_pod("always", 1, "Always"))
    node_agent.finish((namespace, "never"), exit_code=143, reason="Error", message="SIGTERM")
    pod = get_pod(core_v1, namespace, "never")
    assert pod.status.phase == "Failed"
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason, term.message) == (143, "Error", "SIGTERM")

    node_agent.finish((namespace, "always"), exit_code=1)
    pod = get_pod(core_v1, namespace, "always")
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Running"
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1
    assert status.state.running is not None


def test_pod_waits_in_container_creating_until_started(
    core_v1: client.CoreV1Api, namespace: str
) -> None:
    with NodeAgent(core_v1, name=f"sim{uuid.uuid4().hex[:6]}", auto_start=False) as agent:
        agent.add_node(npus=8)
        core_v1.create_namespaced_pod(namespace, npu_pod("slow", 4))
        assert len(agent.device_ids((namespace, "slow"))) == 4
        pod = get_pod(core_v1, namespace, "slow")
        assert pod.status.phase == "Pending"
        assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
        agent.start((namespace, "slow"))
        assert get_pod(core_v1, namespace, "slow").status.phase == "Running"


def test_agents_sharing_a_cluster_hand_out_distinct_addresses(
    core_v1: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    a = node_agent.add_node(npus=8)
    with NodeAgent(core_v1, name=f"sim{uuid.uuid4().hex[:6]}") as other:
        b = other.add_node(npus=8)
        assert a.host_ip != b.host_ip
        for i, node in enumerate((a, b)):
            body = npu_pod(f"p{i}", 1)
            body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node.name}
            core_v1.create_namespaced_pod(namespace, body)
        node_agent.device_ids((namespace, "p0"))
        other.device_ids((namespace, "p1"))
        ips = {get_pod(core_v1, namespace, f"p{i}").status.pod_ip for i in range(2)}
        assert len(ips) == 2


def test_pod_bound_past_the_scheduler_is_rejected_like_kubelet(
    core_v1: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    sim = node_agent.add_node(npus=2)
    body = npu_pod("greedy", 4)
    body["spec"]["nodeName"] = sim.name
    core_v1.create_namespaced_pod(namespace, body)

    def failed() -> client.V1Pod | None:
        p = get_pod(core_v1, namespace, "greedy")
        return p if p.status.phase == "Failed" else None

    pod = wait_for(failed, timeout=30, what="kubelet-style admission failure")
    assert pod.status.reason == "UnexpectedAdmissionError"


def test_garbage_collector_deletes_dependents(
    core_v1: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    node_agent.add_node(npus=8)
    owner = core_v1.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core_v1.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}}
    )
    pod = npu_pod("child-pod", 1)
    pod["metadata"]["ownerReferences"] = [ref]
    core_v1.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: get_pod(core_v1, namespace, "child-pod").status.phase == "Running",
        what="the child pod to run",
    )

    core_v1.delete_namespaced_config_map("owner", namespace)
    # The real garbage collector deletes both; the bound pod then needs the (simulated)
    # kubelet to finish the deletion, as on a real node.
    wait_for(
        lambda: gone(lambda: core_v1.read_namespaced_config_map("child", namespace)),
        timeout=60,
        what="the garbage collector to delete the child ConfigMap",
    )
    wait_for(
        lambda: gone(lambda: core_v1.read_namespaced_pod("child-pod", namespace)),
        timeout=60,
        what="the child pod to be deleted",
    )


# -- the CRD, validated by the API server itself --------------------------------------------


def _examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.y*ml")) if EXAMPLES.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ShuffleNetTrainingJob":
                docs.append(doc)
    return docs


def test_api_server_validates_shufflenet_training_jobs(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    install_crd(k8s_api, crd)
    group = crd["spec"]["group"]
    plural = crd["spec"]["names"]["plural"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("served", True))
    objects = client.CustomObjectsApi(k8s_api)

    examples = _examples()
    assert examples, f"no ShuffleNetTrainingJob example under {EXAMPLES.relative_to(REPO)}"
    for i, doc in enumerate(examples):
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"example-{i}"}
        objects.create_namespaced_custom_object(group, version, namespace, plural, doc)

    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]
    count_schema = schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["devices"][
        "properties"
    ]["count"]
    assert "minimum" in count_schema, "the CRD sets no minimum for spec.devices.count"
    bad = copy.deepcopy(examples[0])
    bad["metadata"] = {"name": "malformed"}
    bad["spec"].setdefault("devices", {})["count"] = int(count_schema["minimum"]) - 1
    with pytest.raises(client.ApiException) as err:
        objects.create_namespaced_custom_object(group, version, namespace, plural, bad)
    assert err.value.status == 422
    assert "spec.devices.count" in err.value.body
