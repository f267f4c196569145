"""The chart's operator objects (rendered by a real helm), the CRD it ships, the plain copies
under manifests/, and every rendered manifest against Kubernetes' published schemas.

tests/k8s/test_operator_rbac.py applies the same RBAC to a real API server and runs the
operator under it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from integration.metrics_tools import CHART, REGISTRY_VALUES, ROOT, by_kind, helm, helm_template

from shufflenet_contract import crd
from shufflenet_operator import main as operator_main
from shufflenet_operator import render

# The schemas the manifests are checked against: a current Kubernetes. (1.20, the oldest the
# product supports, is checked by applying them to the real 1.20 API server in tests/k8s.)
KUBE_VERSION = "1.30.0"
# Kinds without a schema in kubernetes-validate: the Prometheus Operator's CRDs.
NO_SCHEMA_KINDS = {"PodMonitor", "PrometheusRule"}
OPERATOR_ONLY = ("--set", "monitoring.enabled=false")
WATCH_TWO = ("--set", "operator.watchNamespaces={team-a,team-b}")


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every permission the rules grant."""
    return {
        (group, resource, verb)
        for r in rules
        for group in r["apiGroups"]
        for resource in r["resources"]
        for verb in r["verbs"]
    }


# --- the CRD and the plain manifests stay generated from their sources -------------------


def test_chart_crd_equals_the_rendering_of_crd_py() -> None:
    chart_copy = CHART / "crds" / "shufflenettrainingjobs.yaml"
    assert chart_copy.read_text() == crd.render_yaml(), (
        "charts/shufflenet-operator/crds/ is stale: run `make manifests`"
    )


@pytest.fixture(scope="module")
def rendered_manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "render-manifests.sh"), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HELM": helm()},
    )
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.parametrize("folder", ["operator", "monitoring"])
def test_plain_manifests_are_in_sync(rendered_manifests: Path, folder: str) -> None:
    fresh, committed = rendered_manifests / folder, ROOT / "manifests" / folder
    names = sorted(p.name for p in fresh.glob("*.yaml"))
    assert names == sorted(p.name for p in committed.glob("*.yaml"))
    for name in names:
        assert (fresh / name).read_text() == (committed / name).read_text(), (
            f"manifests/{folder}/{name} is stale: run `make manifests`"
        )


def test_plain_operator_manifests_apply_in_order() -> None:
    # `kubectl apply -f manifests/operator/` goes by file name: the namespace first.
    docs = [
        d
        for p in sorted((ROOT / "manifests" / "operator").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    assert [d["kind"] for d in docs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ]
    for d in docs[1:]:
        if d["kind"] != "ClusterRole":
            assert "shufflenet-system" in yaml.safe_dump(d)


# --- every manifest against Kubernetes' schemas ------------------------------------------


def _validate(doc: dict[str, Any], where: str) -> None:
    what = f"{where}: {doc['kind']} {doc['metadata'].get('name')}"
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        assert doc["kind"] in NO_SCHEMA_KINDS, f"{what}: no schema"
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize(
    "values",
    [(), WATCH_TWO, ("--set", "serviceAccount.create=false", "--set", "rbac.create=false")],
    ids=["defaults", "two-namespaces", "no-sa-no-rbac"],
)
def test_rendered_chart_is_valid_kubernetes(values: tuple[str, ...]) -> None:
    docs = helm_template("--include-crds", *values)
    assert {"CustomResourceDefinition", "Deployment"} <= set(by_kind(docs))
    for doc in docs:
        _validate(doc, "helm template")


def test_plain_manifests_are_valid_kubernetes() -> None:
    files = sorted((ROOT / "manifests").glob("*/*.yaml"))
    files = [p for p in files if p.parent.name != "examples"]  # jobs: tested with the CRD
    assert len(files) >= 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                _validate(doc, str(path.relative_to(ROOT)))


# --- the operator's Deployment ------------------------------------------------------------


def test_deployment_runs_two_replicas_with_leader_election_as_non_root() -> None:
    (dep,) = by_kind(helm_template(*OPERATOR_ONLY))["Deployment"]
    spec = dep["spec"]
    # One leads, one stands by; a rollout starts the new pod before the old one goes.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    # On different nodes where there are several, on one where there is one.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]
    assert selector["matchLabels"] == spec["selector"]["matchLabels"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.test:5000/shufflenet/operator:0.1.0"
    # A registry pulls what is not on the node (and IfNotPresent keeps a pinned tag cached).
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["shufflenet-operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    # The leader election's identity starts with the pod's name.
    (env,) = c["env"]
    assert env == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    (sa,) = by_kind(helm_template(*OPERATOR_ONLY))["ServiceAccount"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("values", [(), WATCH_TWO], ids=["all-namespaces", "two-namespaces"])
def test_deployment_args_are_flags_the_operator_accepts(values: tuple[str, ...]) -> None:
    (dep,) = by_kind(helm_template(*OPERATOR_ONLY, *values))["Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = operator_main.parse_args(c["args"])  # exits on a flag it does not know
    assert args.namespaces == (["team-a", "team-b"] if values else [])
    assert args.metrics_port == 8080
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    timing = (
        args.restart_backoff_seconds,
        args.max_backoff_seconds,
        args.resync_seconds,
        args.progress_seconds,
    )
    assert timing == (10, 300, 60, 30) and args.workers == 2
    # The Lease, in the release's namespace, with client-go's durations.
    assert args.leader_elect
    assert (args.leader_elect_name, args.leader_elect_namespace) == (
        "shufflenet-operator",
        "shufflenet-system",
    )
    election = (
        args.leader_elect_lease_duration,
        args.leader_elect_renew_deadline,
        args.leader_elect_retry_period,
    )
    assert election == (15, 10, 2)
    # The chart's rankResources are the operator's own defaults.
    assert args.rank_resources == render.RANK_RESOURCES
    # A job without an image runs the trainer image of its device type, from the registry.
    assert args.trainer_images == {
        "cpu": "registry.test:5000/shufflenet/trainer-cpu:0.1.0",
        "gpu": "registry.test:5000/shufflenet/trainer-cuda:0.1.0",
        "npu": "registry.test:5000/shufflenet/trainer-ascend:0.1.0",
    }


def test_image_values_make_registry_qualified_references_pinned_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    (dep,) = by_kind(
        helm_template(
            *OPERATOR_ONLY,
            "--set", "global.imageRegistry=reg.internal:5000/",
            "--set", "operator.image.tag=1.2", "--set", f"operator.image.digest={digest}",
            "--set", "trainer.images.cpu.repository=ml/trainer",
            "--set", "trainer.images.cpu.tag=7",
            "--set", "trainer.images.gpu.repository=",
        )
    )["Deployment"]  # fmt: skip
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"reg.internal:5000/shufflenet/operator:1.2@{digest}"
    # An empty repository: no default for gpu jobs (they must name their image).
    assert operator_main.parse_args(c["args"]).trainer_images == {
        "cpu": "reg.internal:5000/ml/trainer:7",
        "npu": "reg.internal:5000/shufflenet/trainer-ascend:0.1.0",
    }


def test_the_registry_is_required_with_a_one_line_error_naming_the_value() -> None:
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "global.imageRegistry" in ln]
    assert "required" in line and "--set global.imageRegistry=" in line


def test_one_replica_without_leader_election_recreates_and_has_no_budget() -> None:
    kinds = by_kind(
        helm_template(
            *OPERATOR_ONLY,
            *("--set", "operator.replicas=1", "--set", "operator.leaderElection.enabled=false"),
        )
    )
    (dep,) = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "Role" not in kinds and "PodDisruptionBudget" not in kinds
    # One replica, still elected: a budget would do nothing.
    assert "PodDisruptionBudget" not in by_kind(
        helm_template(*OPERATOR_ONLY, "--set", "operator.replicas=1")
    )


def test_replicas_without_leader_election_fail_the_install_by_name() -> None:
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART), "--set", "operator.leaderElection.enabled=false"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "operator.replicas: more than 1 needs operator.leaderElection.enabled" in proc.stderr


def test_pod_disruption_budget_lets_one_operator_pod_go_at_a_time() -> None:
    kinds = by_kind(helm_template(*OPERATOR_ONLY))
    (pdb,) = kinds["PodDisruptionBudget"]
    (dep,) = kinds["Deployment"]
    assert pdb["apiVersion"] == "policy/v1"  # helm template: a current Kubernetes
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}


def operator_args(*values: str) -> list[str]:
    (dep,) = by_kind(helm_template(*OPERATOR_ONLY, *values))["Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return list(c["args"])


def test_rank_resources_values_become_the_operators_flag() -> None:
    args = operator_args(
        "--set", "operator.rankResources.npu.cpu=24", "--set", "operator.rankResources.gpu=null"
    )  # fmt: skip
    assert "--rank-resources=npu=cpu:24,memory:2Gi,shm:2Gi" in args
    resources = operator_main.parse_args(args).rank_resources
    assert resources["npu"] == render.RankResources(cpu="24", memory="2Gi", shm="2Gi")
    # A device type left out keeps the operator's defaults.
    assert resources["gpu"] == render.RANK_RESOURCES["gpu"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.rankResources.tpu.cpu=1", "operator.rankResources.tpu: not a device type"),
        (
            "operator.rankResources.gpu.requests.cpu=1",
            "operator.rankResources.gpu.requests: not one of cpu, memory, shm",
        ),
    ],
)
def test_a_bad_rank_resources_value_fails_the_install_by_name(value: str, message: str) -> None:
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART), *REGISTRY_VALUES, "--set", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and message in proc.stderr


def test_operator_podmonitor_selects_the_operator_pod() -> None:
    kinds = by_kind(helm_template("--api-versions", "monitoring.coreos.com/v1"))
    (dep,) = kinds["Deployment"]
    monitor = next(
        m for m in kinds["PodMonitor"] if m["metadata"]["name"].endswith("-operator-operator")
    )
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [dep["metadata"]["namespace"]]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in c["ports"]}


# --- RBAC -----------------------------------------------------------------------------------


def test_rbac_is_explicit_no_wildcards() -> None:
    for values in [(), WATCH_TWO]:
        kinds = by_kind(helm_template(*OPERATOR_ONLY, *values))
        for role in kinds["ClusterRole"] + kinds.get("Role", []):
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], (role["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            granted = rule_set(role["rules"])
            assert not {g for g in granted if g[1] in {"secrets", "clusterroles"}}
            # Nodes: only read one by name (quarantine: a failed rank's node's Ready
            # condition and allocatable devices), never listed, watched or written.
            assert {g for g in granted if g[1] == "nodes"} <= {("", "nodes", "get")}


def leader_election_role(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The Role for the Lease, checked to be granted to the operator, in its namespace."""
    (role,) = [r for r in kinds["Role"] if r["metadata"]["name"].endswith("-leader-election")]
    (binding,) = [
        b for b in kinds["RoleBinding"] if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    (sa,) = kinds["ServiceAccount"]
    assert role["metadata"]["namespace"] == sa["metadata"]["namespace"] == "shufflenet-system"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "shufflenet-system"}
    ]
    return role


def test_rbac_for_the_lease_only_in_the_operators_namespace() -> None:
    for values in [(), WATCH_TWO]:
        role = leader_election_role(by_kind(helm_template(*OPERATOR_ONLY, *values)))
        # What client-go's LeaseLock does: create, then get and update the one Lease.
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["shufflenet-operator"],
                "verbs": ["get", "update"],
            },
        ]


def test_rbac_all_namespaces_one_cluster_role() -> None:
    kinds = by_kind(helm_template(*OPERATOR_ONLY))
    assert [leader_election_role(kinds)] == kinds["Role"]
    (role,) = kinds["ClusterRole"]
    granted = rule_set(role["rules"])
    job = ("training.shufflenet.io", "shufflenettrainingjobs")
    assert {(*job, v) for v in ("get", "list", "watch", "delete")} <= granted
    assert ("training.shufflenet.io", "shufflenettrainingjobs/status", "patch") in granted
    # What OwnerReferencesPermissionEnforcement asks of whoever creates a child whose owner
    # reference blocks the owner's deletion; no API call serves it.
    assert ("training.shufflenet.io", "shufflenettrainingjobs/finalizers", "update") in granted
    assert ("training.shufflenet.io", "shufflenettrainingjobs", "update") not in granted
    assert ("", "pods", "create") in granted and ("", "pods", "update") not in granted
    assert ("", "events", "create") in granted
    podgroups = {v for g, r, v in granted if (g, r) == ("scheduling.volcano.sh", "podgroups")}
    assert podgroups == {"get", "create"}  # what the operator does with them, no more
    assert ("", "namespaces", "list") not in granted  # kopf lists them only when namespaced
    (binding,) = kinds["ClusterRoleBinding"]
    (sa,) = kinds["ServiceAccount"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]


def test_rbac_some_namespaces_roles_there_and_only_kopf_reads_cluster_wide() -> None:
    kinds = by_kind(helm_template(*OPERATOR_ONLY, *WATCH_TWO))
    (cluster_role,) = kinds["ClusterRole"]
    assert rule_set(cluster_role["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "nodes", "get"),  # cluster-scoped: quarantine reads a failed rank's node
    }
    lease_role = leader_election_role(kinds)
    kinds["Role"].remove(lease_role)
    kinds["RoleBinding"] = [
        b for b in kinds["RoleBinding"] if b["roleRef"]["name"] != lease_role["metadata"]["name"]
    ]
    assert sorted(r["metadata"]["namespace"] for r in kinds["Role"]) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in kinds["RoleBinding"]) == [
        "team-a",
        "team-b",
    ]
    (all_ns_role,) = by_kind(helm_template(*OPERATOR_ONLY))["ClusterRole"]
    namespaced = rule_set(all_ns_role["rules"]) - rule_set(cluster_role["rules"])
    for role in kinds["Role"]:
        assert rule_set(role["rules"]) == namespaced


def test_operator_off_leaves_monitoring_only() -> None:
    kinds = set(by_kind(helm_template("--set", "operator.enabled=false", "--set",
                                      "monitoring.enabled=true")))  # fmt: skip
    assert kinds == {"ConfigMap", "PodMonitor", "PrometheusRule"}
