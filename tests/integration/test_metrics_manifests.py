"""The Helm chart's monitoring objects (rendered by a real helm) and their plain copies."""

from __future__ import annotations

import json
import re
import subprocess

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


def test_chart_lints() -> None:
    proc = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), *REGISTRY_VALUES],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_objects_carry_their_single_sources() -> None:
    kinds = by_kind(helm_template(*NO_OPERATOR))
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


def test_values_switch_and_relabel() -> None:
    assert helm_template("--set", "monitoring.enabled=false", *NO_OPERATOR) == []
    docs = helm_template(
        "--set", "monitoring.release=", "--set", "monitoring.namespace=monitoring", *NO_OPERATOR
    )
    assert len(docs) == 4
    for d in docs:
        assert "release" not in d["metadata"]["labels"]
        assert d["metadata"]["namespace"] == "monitoring"
    kinds = by_kind(helm_template("--set", "monitoring.dashboard.enabled=false", *NO_OPERATOR))
    assert "ConfigMap" not in kinds and len(kinds["PodMonitor"]) == 2
