"""The Helm chart's monitoring objects (rendered by a real helm) and their plain copies."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from integration.metrics_tools import (
    CHART,
    DASHBOARD,
    REGISTRY_VALUES,
    RULES,
    by_kind,
    helm,
    helm_template,
)

# The operator's objects are tested in test_chart_operator.py (which also checks that the
# plain copies under manifests/ are in sync); here only the monitoring ones.
NO_OPERATOR = ("--set", "operator.enabled=false")
# `helm template` knows no cluster: told that it serves the Prometheus Operator's kinds.
SERVED = ("--api-versions", "monitoring.coreos.com/v1")
EVERYTHING = {"ConfigMap": 1, "PodMonitor": 2, "PrometheusRule": 1}
# monitoring.enabled, and what a cluster serving only one of the kinds tells helm install.
AUTO, TRUE, FALSE = (), ("--set", "monitoring.enabled=true"), ("--set", "monitoring.enabled=false")
ONLY_PODMONITOR = (*SERVED, "--api-versions", "monitoring.coreos.com/v1/PodMonitor")
ONLY_RULE = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def test_chart_lints() -> None:
    proc = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), *REGISTRY_VALUES],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_objects_carry_their_single_sources() -> None:
    kinds = by_kind(helm_template(*SERVED, *NO_OPERATOR))
    (cm,) = kinds["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["shufflenet-training.json"]) == json.loads(DASHBOARD.read_text())
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    monitors = {d["metadata"]["name"]: d for d in kinds["PodMonitor"]}
    trainer = monitors["shufflenet-operator-trainer"]
    operator = monitors["shufflenet-operator-operator"]
    for obj in (cm, rule, trainer, operator):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The trainer's own `job`/`rank` labels must survive the scrape (no exported_job).
    (endpoint,) = trainer["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True and "port" not in endpoint
    # Every rank's port: `metrics`, and `metrics-<k>` of the ranks of a multi-device pod.
    keep = next(r for r in endpoint["relabelings"] if r.get("action") == "keep")
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_container_port_name"]
    pattern = re.compile(f"^(?:{keep['regex']})$")  # Prometheus anchors relabel regexes
    assert all(pattern.match(p) for p in ("metrics", "metrics-1", "metrics-7"))
    assert not any(pattern.match(p) for p in ("rendezvous", "metricsx", "healthz"))
    assert trainer["spec"]["namespaceSelector"] == {"any": True}
    assert trainer["spec"]["jobLabel"] == "training.shufflenet.io/job-name"
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "operator"
    )


def kind_counts(*args: str) -> dict[str, int]:
    return {k: len(v) for k, v in by_kind(helm_template(*args, *NO_OPERATOR)).items()}


@pytest.mark.parametrize(
    ("values", "api_versions", "expected"),
    [
        # auto (the default): the Prometheus Operator's objects where the cluster serves
        # them, which `helm template` knows only from --api-versions; the dashboard always.
        pytest.param(AUTO, (), {"ConfigMap": 1}, id="auto"),
        pytest.param(AUTO, SERVED, EVERYTHING, id="auto-served"),
        pytest.param(("--set", "monitoring.enabled=auto"), SERVED, EVERYTHING, id="auto-set"),
        # helm install's discovery lists each served kind too: only those.
        pytest.param(AUTO, ONLY_PODMONITOR, {"ConfigMap": 1, "PodMonitor": 2}, id="only-pm"),
        pytest.param(AUTO, ONLY_RULE, {"ConfigMap": 1, "PrometheusRule": 1}, id="only-rule"),
        # true: all of them, served or not (renders for GitOps, which know no cluster).
        pytest.param(TRUE, (), EVERYTHING, id="true"),
        pytest.param(("--set-string", "monitoring.enabled=true"), (), EVERYTHING, id="true-str"),
        # false: none of them, served or not.
        pytest.param(FALSE, SERVED, {}, id="false"),
        pytest.param(("--set-string", "monitoring.enabled=false"), SERVED, {}, id="false-str"),
    ],
)
def test_monitoring_enabled_auto_true_false(
    values: tuple[str, ...], api_versions: tuple[str, ...], expected: dict[str, int]
) -> None:
    assert kind_counts(*values, *api_versions) == expected


def test_a_bad_monitoring_enabled_fails_naming_the_choices() -> None:
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART), *REGISTRY_VALUES, "--set", "monitoring.enabled=yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert 'monitoring.enabled: "yes" is not one of auto' in proc.stderr


def test_values_switch_and_relabel() -> None:
    docs = helm_template(
        "--set", "monitoring.release=", "--set", "monitoring.namespace=monitoring", *SERVED,
        *NO_OPERATOR,
    )  # fmt: skip
    assert len(docs) == 4
    for d in docs:
        assert "release" not in d["metadata"]["labels"]
        assert d["metadata"]["namespace"] == "monitoring"
    kinds = kind_counts("--set", "monitoring.dashboard.enabled=false", *SERVED)
    assert kinds == {"PodMonitor": 2, "PrometheusRule": 1}
