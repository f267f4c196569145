"""`helm install` of the chart into the REAL control plane, and `helm uninstall`.

The real helm binary against the real 1.20 API server: the CRD from the chart's `crds/`, the
ServiceAccount, RBAC and the operator's Deployment, whose pod the real scheduler places on
a SIMULATED node (tests/sim) that reports it Running; then everything but the CRD (which
Helm leaves, as it documents) is removed by the uninstall.
"""

from __future__ import annotations

import json
import subprocess
import uuid

from integration.metrics_tools import CHART, REGISTRY_VALUES, helm
from kubernetes import client
from sim.node_agent import NodeAgent, wait_for

from k8s.cluster import ControlPlane
from shufflenet_contract import crd


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


def test_helm_install_runs_the_operator_and_uninstall_removes_it(
    control_plane: ControlPlane, node_agent: NodeAgent, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=0)
    release = f"sn{uuid.uuid4().hex[:6]}"
    namespace = f"{release}-system"
    run_helm(
        control_plane,
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        *REGISTRY_VALUES, "--set", "monitoring.enabled=false", "--wait", "--timeout", "120s",
    )  # fmt: skip
    try:
        status = json.loads(run_helm(control_plane, "status", release, "-n", namespace,
                                     "-o", "json").stdout)  # fmt: skip
        assert status["info"]["status"] == "deployed"
        ext = client.ApiextensionsV1Api(control_plane.api)
        assert ext.read_custom_resource_definition(f"{crd.PLURAL}.{crd.GROUP}")
        apps = client.AppsV1Api(control_plane.api)
        (deployment,) = apps.list_namespaced_deployment(namespace).items
        # --wait returned: the Deployment's pod was scheduled and reported ready.
        assert deployment.status.ready_replicas == 1
        (pod,) = core_v1.list_namespaced_pod(namespace).items
        (container,) = pod.spec.containers
        assert container.command == ["shufflenet-operator"]
        assert pod.spec.service_account_name == deployment.spec.template.spec.service_account_name
    finally:
        run_helm(control_plane, "uninstall", release, "-n", namespace, "--wait")

    def removed() -> bool:
        rbac = client.RbacAuthorizationV1Api(control_plane.api)
        roles = [r for r in rbac.list_cluster_role().items if r.metadata.name.startswith(release)]
        return not roles and not core_v1.list_namespaced_pod(namespace).items

    wait_for(removed, timeout=120, what="the release's objects removed")
    core_v1.delete_namespace(namespace)
