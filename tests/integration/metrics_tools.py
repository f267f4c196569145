"""Where the monitoring tests find their real tools; a missing tool fails, never skips.

`make test-deps` (a prerequisite of `make test`) installs them all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shufflenet-operator"
DASHBOARD = CHART / "dashboards" / "shufflenet-training.json"
RULES = CHART / "rules" / "shufflenet-training.rules.yaml"
RULES_TEST = ROOT / "tests" / "prometheus" / "shufflenet-training.rules.test.yaml"
GRAFANA_DIR = ROOT / "tests" / "grafana"
# The chart requires the registry of its images; .test is reserved (RFC 2606), no one's.
REGISTRY_VALUES = ("--set", "global.imageRegistry=registry.test:5000")


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["refId"], t["expr"])
        for p in dash["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def substitute(expr: str, *, namespace: str, job: str, rate_interval: str) -> str:
    """The query Grafana sends for single values of the dashboard's variables (single values
    of multi-value variables are regex-escaped; the test values need no escaping)."""
    return (
        expr.replace("$namespace", namespace)
        .replace("$job", job)
        .replace("$__rate_interval", rate_interval)
    )


def _missing(what: str) -> None:
    pytest.fail(f"{what} not found: run `make test-deps` (it installs the monitoring test tools)")


def tool(name: str) -> str:
    """A Debian tool on PATH (prometheus, promtool)."""
    path = shutil.which(name)
    if path is None:
        _missing(name)
    return str(path)


def tsc() -> Path:
    path = GRAFANA_DIR / "node_modules" / ".bin" / "tsc"
    if not path.exists() or not (GRAFANA_DIR / "node_modules" / "@grafana" / "schema").is_dir():
        _missing("tsc and @grafana/schema under tests/grafana/node_modules")
    return path


def helm() -> str:
    """$HELM, else the binary scripts/install-helm.sh caches."""
    explicit = os.environ.get("HELM")
    if explicit:
        return explicit
    cache = Path(os.environ.get("SHUFFLENET_CACHE", Path.home() / ".cache" / "shufflenet-k8s"))
    path = cache / "helm" / "bin" / "helm"
    if not path.exists():
        _missing(f"helm ({path})")
    return str(path)


def helm_template(
    *args: str, release: str = "shufflenet-operator", namespace: str = "shufflenet-system"
) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them (extra flags in args)."""
    proc = subprocess.run(
        [helm(), "template", release, str(CHART), "-n", namespace, *REGISTRY_VALUES, *args],
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


class Prometheus:
    """A client of Prometheus's HTTP API on loopback."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        assert data["resultType"] == "vector", data
        return data["result"]

    def values(self, expr: str, at: float | None = None) -> dict[str, float]:
        """{"label=value,...": sample value} of an instant vector (metric names left out)."""
        out = {}
        for series in self.query(expr, at):
            labels = sorted(series["metric"].items())
            key = ",".join(f"{k}={v}" for k, v in labels if k != "__name__")
            out[key] = float(series["value"][1])
        return out

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False
