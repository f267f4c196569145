"""The Helm chart's monitoring objects (rendered by a real helm) and their plain copies."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from metrics_tools import CHART, DASHBOARD, ROOT, RULES, helm

MANIFESTS = ROOT / "manifests" / "monitoring"


def helm_template(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [helm(), "template", "shufflenet-operator", str(CHART), "-n", "shufflenet-system", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def test_chart_lints() -> None:
    proc = subprocess.run(
        [helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_manifests_are_in_sync(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "render-monitoring.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HELM": helm()},
    )
    assert proc.returncode == 0, proc.stderr
    rendered = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert rendered == sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    for name in rendered:
        assert (tmp_path / name).read_text() == (MANIFESTS / name).read_text(), (
            f"manifests/monitoring/{name} is stale: run `make manifests`"
        )


def test_objects_carry_their_single_sources() -> None:
    kinds = by_kind(helm_template())
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
    assert endpoint["honorLabels"] is True and endpoint["port"] == "metrics"
    assert trainer["spec"]["namespaceSelector"] == {"any": True}
    assert trainer["spec"]["jobLabel"] == "training.shufflenet.io/job-name"
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "operator"
    )


def test_values_switch_and_relabel() -> None:
    assert helm_template("--set", "monitoring.enabled=false") == []
    docs = helm_template("--set", "monitoring.release=", "--set", "monitoring.namespace=monitoring")
    assert len(docs) == 4
    for d in docs:
        assert "release" not in d["metadata"]["labels"]
        assert d["metadata"]["namespace"] == "monitoring"
    kinds = by_kind(helm_template("--set", "monitoring.dashboard.enabled=false"))
    assert "ConfigMap" not in kinds and len(kinds["PodMonitor"]) == 2
