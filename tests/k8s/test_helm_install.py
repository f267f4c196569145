"""`helm install` of the chart into the REAL control plane, and `helm uninstall`.

The real helm binary against the real 1.20 API server: the CRD from the chart's `crds/`, the
ServiceAccount, RBAC and the operator's Deployment, whose pod the real scheduler places on
a SIMULATED node (tests/sim) that reports it Running; then everything but the CRD (which
Helm leaves, as it documents) is removed by the uninstall.

With the default values (monitoring.enabled: auto), whether the cluster has the Prometheus
Operator's CRDs or not: without them the install succeeds without PodMonitors and
PrometheusRule; with them (the Prometheus Operator's own, tests/prometheus-operator-crds/)
the same install creates them, and the API server stores them under the upstream schema
with nothing pruned; with the PrometheusRule CRD alone, the PrometheusRule alone.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration.metrics_tools import CHART, REGISTRY_VALUES, helm
from kubernetes import client
from sim.node_agent import NodeAgent, wait_for

from k8s.cluster import ControlPlane
from k8s.operator_harness import install_crd
from shufflenet_contract import crd

PROMETHEUS_OPERATOR_CRDS = Path(__file__).resolve().parents[1] / "prometheus-operator-crds"
MONITORING_GROUP, MONITORING_VERSION = "monitoring.coreos.com", "v1"
# The Prometheus Operator's kinds the chart creates, by their plural.
MONITORING_PLURALS = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}


def run_helm(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm(), *args, "--kubeconfig", str(cp.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=180,
        env=cp.env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def release_objects(cp: ControlPlane, release: str, namespace: str) -> list[dict[str, Any]]:
    """The objects helm installed for the release (`helm get manifest`)."""
    manifest = run_helm(cp, "get", "manifest", release, "-n", namespace).stdout
    return [d for d in yaml.safe_load_all(manifest) if d]


def serves_monitoring_group(api: client.ApiClient) -> bool:
    groups = client.ApisApi(api).get_api_versions().groups
    return any(g.name == MONITORING_GROUP for g in groups)


def for_kubernetes_1_20(node: Any) -> Any:
    """The upstream CRD without its `default: ""` on strings, which the 1.20 API server
    refuses ("default: Invalid value: "null": in body must be of type string"; it reads the
    empty string as null, while `default: "x"` passes). Nothing else is changed. In the
    PodMonitor CRD they are the `name` of each Secret or ConfigMap key reference (for
    authentication and TLS, which the chart's objects do not use); the PrometheusRule CRD has
    none. The Prometheus Operator's installation docs ask Kubernetes 1.25 of its releases
    from v0.84 on, for the CEL rules of its other CRDs; these two have no CEL rule."""
    if isinstance(node, dict):
        return {
            k: for_kubernetes_1_20(v)
            for k, v in node.items()
            if not (k == "default" and v == "" and node.get("type") == "string")
        }
    if isinstance(node, list):
        return [for_kubernetes_1_20(v) for v in node]
    return node


@contextmanager
def prometheus_operator_crds(api: client.ApiClient, kinds: Iterable[str]) -> Iterator[None]:
    """The Prometheus Operator's CRDs of these kinds, as released upstream (but
    for_kubernetes_1_20), installed and served; deleted again after, and gone from
    discovery, so that the other tests of the session's cluster see one without them."""
    ext = client.ApiextensionsV1Api(api)
    files = [
        PROMETHEUS_OPERATOR_CRDS / f"{MONITORING_GROUP}_{MONITORING_PLURALS[kind]}.yaml"
        for kind in kinds
    ]
    bodies = [for_kubernetes_1_20(yaml.safe_load(f.read_text())) for f in files]
    try:
        for body in bodies:
            install_crd(api, body)
        yield
    finally:
        for body in bodies:
            try:
                ext.delete_custom_resource_definition(body["metadata"]["name"])
            except client.ApiException as e:
                if e.status != 404:
                    raise
        wait_for(lambda: not serves_monitoring_group(api), timeout=60,
                 what="monitoring.coreos.com gone from discovery")  # fmt: skip


def monitoring_objects(
    api: client.ApiClient, namespace: str, kinds: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """The objects of these kinds in the namespace, by kind, as the API server stores them."""
    custom = client.CustomObjectsApi(api)
    return {
        kind: custom.list_namespaced_custom_object(
            MONITORING_GROUP, MONITORING_VERSION, namespace, MONITORING_PLURALS[kind]
        )["items"]
        for kind in kinds
    }


def contains(stored: Any, sent: Any) -> bool:
    """Whether every field that was sent is stored with its value (the API server may add
    defaults; a field the CRD's schema does not know would have been pruned)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            k in stored and contains(stored[k], v) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(sent)
            and all(map(contains, stored, sent))
        )
    return bool(stored == sent)


def test_helm_install_runs_the_operator_and_uninstall_removes_it(
    control_plane: ControlPlane, node_agent: NodeAgent, core_v1: client.CoreV1Api
) -> None:
    # The defaults, on a cluster without the Prometheus Operator's CRDs.
    assert not serves_monitoring_group(control_plane.api)
    node_agent.add_node(npus=0)
    release = f"sn{uuid.uuid4().hex[:6]}"
    namespace = f"{release}-system"
    run_helm(
        control_plane,
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        *REGISTRY_VALUES, "--wait", "--timeout", "120s",
    )  # fmt: skip
    try:
        status = json.loads(run_helm(control_plane, "status", release, "-n", namespace,
                                     "-o", "json").stdout)  # fmt: skip
        assert status["info"]["status"] == "deployed"
        ext = client.ApiextensionsV1Api(control_plane.api)
        assert ext.read_custom_resource_definition(f"{crd.PLURAL}.{crd.GROUP}")
        apps = client.AppsV1Api(control_plane.api)
        (deployment,) = apps.list_namespaced_deployment(namespace).items
        # --wait returned: the Deployment's two pods were scheduled and reported ready.
        assert deployment.status.ready_replicas == 2
        for pod in core_v1.list_namespaced_pod(namespace).items:
            (container,) = pod.spec.containers
            assert container.command == ["shufflenet-operator"]
            assert pod.spec.service_account_name == (
                deployment.spec.template.spec.service_account_name
            )
        # The PodDisruptionBudget in the version the 1.20 API server serves.
        pdbs = control_plane.kubectl("get", "pdb", "-n", namespace, "-o", "json").stdout
        (pdb,) = json.loads(pdbs)["items"]
        assert pdb["apiVersion"] == "policy/v1beta1" and pdb["spec"]["maxUnavailable"] == 1
        # No PodMonitor or PrometheusRule; the dashboard, which needs no CRD, is there.
        kinds = {d["kind"] for d in release_objects(control_plane, release, namespace)}
        assert not kinds & set(MONITORING_PLURALS)
        assert core_v1.read_namespaced_config_map(f"{release}-shufflenet-operator-dashboard",
                                                  namespace)  # fmt: skip
    finally:
        run_helm(control_plane, "uninstall", release, "-n", namespace, "--wait")

    def removed() -> bool:
        rbac = client.RbacAuthorizationV1Api(control_plane.api)
        roles = [r for r in rbac.list_cluster_role().items if r.metadata.name.startswith(release)]
        return not roles and not core_v1.list_namespaced_pod(namespace).items

    wait_for(removed, timeout=120, what="the release's objects removed")
    core_v1.delete_namespace(namespace)


@pytest.mark.parametrize(
    "served",
    [("PodMonitor", "PrometheusRule"), ("PrometheusRule",)],
    ids=["both-crds", "only-the-prometheusrule-crd"],
)
def test_helm_install_creates_the_monitors_where_the_prometheus_operator_crds_are(
    control_plane: ControlPlane, core_v1: client.CoreV1Api, served: tuple[str, ...]
) -> None:
    release = f"sn{uuid.uuid4().hex[:6]}"
    namespace = f"{release}-system"
    fullname = f"{release}-shufflenet-operator"
    expected = {
        "PodMonitor": [f"{fullname}-operator", f"{fullname}-trainer"],
        "PrometheusRule": [f"{fullname}-training"],
    }
    with prometheus_operator_crds(control_plane.api, served):
        # The same default install (no --wait: the operator's pod has no node to run on
        # here). Of the kinds, it creates those the cluster serves, the others would fail it.
        run_helm(
            control_plane,
            "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
            *REGISTRY_VALUES,
        )  # fmt: skip
        try:
            sent = {
                d["metadata"]["name"]: d
                for d in release_objects(control_plane, release, namespace)
                if d["kind"] in MONITORING_PLURALS
            }
            stored = monitoring_objects(control_plane.api, namespace, served)
            names = {k: sorted(o["metadata"]["name"] for o in v) for k, v in stored.items()}
            assert names == {kind: expected[kind] for kind in served}
            assert sorted(sent) == sorted(n for kind in served for n in expected[kind])
            for obj in (o for objs in stored.values() for o in objs):
                # Nothing the chart sent was pruned by the upstream schema.
                assert contains(obj["spec"], sent[obj["metadata"]["name"]]["spec"]), obj
        finally:
            run_helm(control_plane, "uninstall", release, "-n", namespace, "--wait")
        assert monitoring_objects(control_plane.api, namespace, served) == {k: [] for k in served}
    core_v1.delete_namespace(namespace)
