"""Where the monitoring tests find their real tools; a missing tool fails, never skips.

`make test-deps` (a prerequisite of `make test`) installs them all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shufflenet-operator"
DASHBOARD = CHART / "dashboards" / "shufflenet-training.json"
RULES = CHART / "rules" / "shufflenet-training.rules.yaml"
RULES_TEST = ROOT / "tests" / "prometheus" / "shufflenet-training.rules.test.yaml"
GRAFANA_DIR = ROOT / "tests" / "grafana"


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
