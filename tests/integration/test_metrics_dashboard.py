"""The Grafana dashboard: typed against Grafana's published schema with `tsc --noEmit`, and
checked for what the issue asks of it (variables, panels, selectors).

Its PromQL runs against a real Prometheus in test_metrics_prometheus.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from integration.grafana_ts import dashboard_module
from integration.metrics_tools import DASHBOARD, GRAFANA_DIR, tsc

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "NodeNext",
        "moduleResolution": "NodeNext",
        "strict": True,
        "noEmit": True,
        "types": [],
    },
    "files": ["dashboard.ts"],
}
# A metric name and its label matchers ("" when it has none).
METRIC_REF = re.compile(r"\b(shufflenet_\w+)(\{[^}]*\})?")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def run_tsc(dash: dict[str, Any], folder: Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    # node_modules is found by walking up from the checked file: link the installed one.
    (folder / "node_modules").symlink_to(GRAFANA_DIR / "node_modules")
    (folder / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (folder / "dashboard.ts").write_text(dashboard_module(dash))
    return subprocess.run(
        [str(tsc()), "-p", str(folder)], capture_output=True, text=True, timeout=300
    )


def test_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    proc = run_tsc(load(), tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_type_check_catches_schema_errors(tmp_path: Path) -> None:
    dash = load()
    dash["graphTooltip"] = "shared"  # an enum of numbers
    dash["templating"]["list"][1]["refrsh"] = 2  # misspelt field
    stat = next(p for p in dash["panels"] if p["type"] == "stat")
    stat["options"]["colorMode"] = "rainbow"  # not a BigValueColorMode
    ts = next(p for p in dash["panels"] if p["type"] == "timeseries")
    ts["gridPos"]["w"] = "12"  # a number in the schema
    proc = run_tsc(dash, tmp_path / "bad")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if "error TS" in line]
    assert len(errors) == 4, proc.stdout


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["multi"]
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "$namespace" in variables["job"]["query"]["query"]


def test_panels_cover_the_issue_and_use_the_variables() -> None:
    dash = load()
    titles = {p["title"] for p in panels(dash)}
    assert {
        "Global images/s",
        "Images/s per job",
        "Images/s per rank",
        "Step time p50 / p95",
        "Data-wait share",
        "Training loss",
        "Validation top-1 / top-5",
        "Epoch progress",
        "ETA",
        "Jobs by phase",
        "Job restarts",
    } <= titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            assert t["datasource"] == p["datasource"]
            for name, labels in METRIC_REF.findall(expr):
                if name.startswith("shufflenet_operator_reconcile"):
                    continue  # the operator's own health, not per namespace
                # Every series the dashboard reads is narrowed to the chosen namespaces, and
                # per-job series to the chosen jobs.
                assert 'namespace=~"$namespace"' in labels, (p["title"], expr)
                if not name.startswith("shufflenet_operator_jobs"):
                    assert 'job=~"$job"' in labels, (p["title"], expr)


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for p in load()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        cells = {(x, y) for x in xs for y in ys}
        assert not cells & taken, p["title"]
        taken |= cells


@pytest.mark.parametrize("field", ["uid", "title", "schemaVersion"])
def test_dashboard_identity(field: str) -> None:
    assert load()[field]
