"""The chart's RBAC is enough for the operator, and no more, on the REAL 1.20 API server.

The ServiceAccount, ClusterRole and bindings that `helm template` renders are applied to the
control plane; the operator then runs under that ServiceAccount's token (as in its
Deployment, which the API server also accepts, by a server-side dry run) and takes jobs
through creation, a whole-job restart, success and TTL deletion, with the SIMULATED kubelet
and device plugin (tests/sim) as the nodes. Any 403 would show in its log or stall the job.
The API server runs OwnerReferencesPermissionEnforcement (scripts/cluster/up.sh), as strict
clusters such as OpenShift do: every child's blocking owner reference needs the chart's
`update` on `shufflenettrainingjobs/finalizers`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration.metrics_tools import helm_template
from kubernetes import client, config
from sim.node_agent import NodeAgent, wait_for

from k8s.cluster import ControlPlane
from k8s.operator_harness import Jobs, OperatorProcess, install_crd, job_manifest
from k8s.volcano import podgroup_api
from shufflenet_contract import crd, ranktable
from shufflenet_operator import render

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
# What the operator's log must never say: an API call refused (kopf's APIForbiddenError, the
# client's ApiException "(403) Reason: Forbidden"), or kopf falling back for lack of rights.
REFUSALS = ("forbidden", "not enough permissions")


def operator_objects(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    """The chart's objects for this release with its default values: ServiceAccount, RBAC,
    Deployment, and the dashboard ConfigMap (no PodMonitor: `helm template` serves no CRD)."""
    return helm_template(*values, release=release, namespace=namespace)


def service_account_kubeconfig(
    cp: ControlPlane, core: client.CoreV1Api, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig for the control plane that authenticates with the ServiceAccount's token
    (1.20's token controller puts it in a Secret named in the ServiceAccount)."""

    def token_secret() -> str | None:
        secrets = core.read_namespaced_service_account(name, namespace).secrets
        return secrets[0].name if secrets else None

    secret = wait_for(token_secret, timeout=60, what=f"token of ServiceAccount {name}")
    token = base64.b64decode(core.read_namespaced_secret(secret, namespace).data["token"])
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    (cluster,) = admin["clusters"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": name, "user": {"token": token.decode()}}],
                "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
                "current-context": name,
            }
        )
    )
    path.chmod(0o600)
    return path


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except client.ApiException as e:
        return e.status == 403
    return False


def no_refusals(op: OperatorProcess) -> None:
    for log in sorted(op.log_dir.glob("operator-*.log")):
        lines = [
            ln for ln in log.read_text().splitlines() if any(r in ln.lower() for r in REFUSALS)
        ]
        assert not lines, f"operator log {log.name}:\n" + "\n".join(lines[:20])


def child_of(owner: dict[str, str]) -> dict[str, Any]:
    """A ConfigMap owned by `owner` as the operator owns its children (blockOwnerDeletion)."""
    ref = {**owner, "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}
    return {"metadata": {"generateName": "child-", "ownerReferences": [ref]}}


def _other_jobs_gone(custom: client.CustomObjectsApi, namespace: str) -> bool:
    items = custom.list_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL)["items"]
    return not [j for j in items if j["metadata"]["namespace"] != namespace]


@dataclass
class Installed:
    docs: dict[str, list[dict[str, Any]]]  # the chart's operator objects by kind
    kubeconfig: Path  # authenticates as the operator's ServiceAccount
    core: client.CoreV1Api  # the API as that ServiceAccount


class Case:
    """A namespace of the test cluster, with the CRD, where the chart's ServiceAccount and
    RBAC get applied as the admin; the cluster-scoped objects are removed at the end."""

    def __init__(self, cp: ControlPlane, namespace: str, log_dir: Path) -> None:
        self.cp = cp
        self.namespace = namespace
        self.log_dir = log_dir
        self.core = client.CoreV1Api(cp.api)
        self.custom = client.CustomObjectsApi(cp.api)
        self.jobs = Jobs(cp.api, namespace)
        self._cluster_scoped: list[tuple[str, str]] = []

    def apply(self, docs: list[dict[str, Any]], *flags: str) -> str:
        stream = "".join("---\n" + yaml.safe_dump(d) for d in docs)
        proc = self.cp.kubectl("apply", *flags, "-f", "-", input=stream, check=False)
        assert proc.returncode == 0, proc.stderr
        if "--dry-run=server" not in flags:
            self._cluster_scoped += [
                (d["kind"].lower(), d["metadata"]["name"])
                for d in docs
                if d["kind"] in CLUSTER_SCOPED
            ]
        return proc.stdout

    def install_rbac(self, *values: str) -> Installed:
        """The chart's ServiceAccount, RBAC and dashboard ConfigMap (not the Deployment), with
        these values."""
        docs: dict[str, list[dict[str, Any]]] = {}
        for d in operator_objects(f"rbac-{self.namespace}", self.namespace, *values):
            docs.setdefault(d["kind"], []).append(d)
        # Not the Deployment, nor the PodDisruptionBudget (policy/v1 as `helm template`
        # renders it; `helm install` picks 1.20's v1beta1: tests/k8s/test_real_node.py).
        rbac = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        self.apply([d for kind, ds in docs.items() if kind in rbac for d in ds])
        (sa,) = docs["ServiceAccount"]
        kubeconfig = service_account_kubeconfig(
            self.cp,
            self.core,
            self.namespace,
            sa["metadata"]["name"],
            self.log_dir / "sa.kubeconfig",
        )
        sa_api = config.new_client_from_config(config_file=str(kubeconfig))
        return Installed(docs, kubeconfig, client.CoreV1Api(sa_api))

    @contextmanager
    def operator_as(self, rbac: Installed, watch: list[str]) -> Iterator[OperatorProcess]:
        """The operator under the ServiceAccount's kubeconfig, with Volcano's PodGroup API
        served (so that gang jobs need their PodGroup rights), electing itself leader
        through the Lease as the Deployment says; at the end, its log must show no refusal."""
        (deployment,) = rbac.docs["Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        election = [a for a in container["args"] if a.startswith("--leader-elect")]
        assert "--leader-elect" in election
        op = OperatorProcess(
            self.cp,
            self.namespace,
            self.log_dir,
            namespaces=watch,
            env={"KUBECONFIG": str(rbac.kubeconfig)},
            args=election,
        )
        with podgroup_api(self.cp.api):
            op.start()
            try:
                yield op
            finally:
                op.stop()
                no_refusals(op)

    def remove(self) -> None:
        for kind, name in self._cluster_scoped:
            self.cp.kubectl("delete", kind, name, "--ignore-not-found", check=False)


@pytest.fixture
def case(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Case]:
    install_crd(control_plane.api)
    c = Case(control_plane, namespace, tmp_path)
    try:
        yield c
    finally:
        c.remove()


GANG = {"schedulerName": "default-scheduler", "gang": True}


def test_cluster_role_runs_an_npu_job_in_any_namespace(node_agent: NodeAgent, case: Case) -> None:
    ns, jobs, core, custom = case.namespace, case.jobs, case.core, case.custom
    rbac = case.install_rbac()
    assert sorted(rbac.docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    # The Deployment passes the 1.20 API server's validation and admission as well.
    assert "created (server dry run)" in case.apply(rbac.docs["Deployment"], "--dry-run=server")
    (role,) = rbac.docs["ClusterRole"]
    applied = client.RbacAuthorizationV1Api(case.cp.api).read_cluster_role(role["metadata"]["name"])
    for rule in applied.rules:
        for field in (rule.api_groups, rule.resources, rule.verbs):
            assert "*" not in field, rule
    assert refused(lambda: rbac.core.list_namespaced_secret(ns))
    assert refused(lambda: rbac.core.list_node())
    assert not refused(lambda: rbac.core.list_pod_for_all_namespaces(limit=1))
    # The API server runs OwnerReferencesPermissionEnforcement, as strict clusters do: a child
    # whose owner reference blocks the owner's deletion needs update on the owner's
    # finalizers, which the chart grants for the jobs only (the jobs below show it enough).
    configmap_owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    assert refused(lambda: rbac.core.create_namespaced_config_map(ns, child_of(configmap_owner)))

    # Watching every namespace, the operator would also act on the jobs that earlier tests
    # left in namespaces still being deleted, where the API server refuses new objects.
    wait_for(lambda: _other_jobs_gone(custom, ns), timeout=180, what="others' jobs gone")

    node_agent.add_node(npus=4)
    node_agent.add_node(npus=4)
    with case.operator_as(rbac, watch=[]):
        # A TTL long enough for the Succeeded phase to be seen before the job goes.
        run_policy = {"backoffLimit": 2, "ttlSecondsAfterFinished": 5}
        created = jobs.create(job_manifest("rbac8", scheduling=GANG, runPolicy=run_policy))
        uid = created["metadata"]["uid"]

        pods = wait_for(lambda: len(p := jobs.pods("rbac8")) == 8 and p, what="8 rank pods")
        assert all(p.metadata.owner_references[0].uid == uid for p in pods)
        svc = core.read_namespaced_service("rbac8", ns)
        assert svc.spec.cluster_ip == "None"
        pg = custom.get_namespaced_custom_object(
            render.PODGROUP_GROUP,
            render.PODGROUP_VERSION,
            ns,
            render.PODGROUP_PLURAL,
            render.podgroup_name(created),
        )
        assert pg["spec"]["minMember"] == 8
        status = jobs.wait_phase("rbac8", "Running")
        assert status["ranks"]["running"] == 8 and status["rankTable"]["status"] == "completed"
        cm = core.read_namespaced_config_map("rbac8-ranktable", ns)
        table = ranktable.parse(cm.data["hccl.json"])
        for rank in range(8):
            ranktable.validate_rank_table(table, rank, 8)
        # Events are posted after the status they report.
        wanted = {"PodsCreated", "AllRanksRunning"}
        wait_for(lambda: wanted <= {e.reason for e in jobs.events("rbac8")}, what="Events")

        # A retryable exit: every rank pod deleted, the rank table reset, new pods.
        node_agent.finish(pods[1], exit_code=143)
        wait_for(lambda: jobs.status("rbac8").get("restarts") == 1, what="restarts == 1")
        first = {p.metadata.uid for p in pods}
        wait_for(
            lambda: len(p := jobs.pods("rbac8")) == 8 and not first & {x.metadata.uid for x in p},
            timeout=60,
            what="8 new rank pods",
        )
        jobs.wait_phase("rbac8", "Running")
        for pod in jobs.pods("rbac8"):
            node_agent.finish(pod, exit_code=0)
        jobs.wait_phase("rbac8", "Succeeded")

        wait_for(lambda: jobs.gone("rbac8"), timeout=60, what="job deleted by its TTL")


def test_roles_in_watched_namespaces_only(node_agent: NodeAgent, case: Case) -> None:
    ns, jobs, core = case.namespace, case.jobs, case.core
    rbac = case.install_rbac("--set", f"operator.watchNamespaces={{{ns}}}")
    assert sorted(rbac.docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    assert refused(lambda: rbac.core.list_namespaced_pod("default"))
    assert refused(lambda: rbac.core.list_pod_for_all_namespaces(limit=1))
    assert not refused(lambda: rbac.core.list_namespaced_pod(ns))
    # Leader election: its own Lease, in its own namespace, and no other.
    leases = client.CoordinationV1Api(rbac.core.api_client)
    lease = f"rbac-{ns}-shufflenet-operator"
    assert refused(lambda: leases.read_namespaced_lease("another", ns))
    assert refused(lambda: leases.list_namespaced_lease(ns))
    assert refused(lambda: leases.read_namespaced_lease(lease, "default"))

    node_agent.add_node(npus=4)
    with case.operator_as(rbac, watch=[ns]):
        jobs.create(job_manifest("rbac2", count=2, scheduling=GANG))
        jobs.wait_phase("rbac2", "Running")
        assert leases.read_namespaced_lease(lease, ns).spec.holder_identity
        cm = core.read_namespaced_config_map("rbac2-ranktable", ns)
        assert json.loads(cm.data["hccl.json"])["status"] == "completed"
        for pod in jobs.pods("rbac2"):
            node_agent.finish(pod, exit_code=0)
        jobs.wait_phase("rbac2", "Succeeded")
