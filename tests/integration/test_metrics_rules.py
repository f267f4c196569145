"""The alert rules with Debian's promtool: syntax, and each alert firing on a crafted series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from integration.metrics_tools import RULES, RULES_TEST, tool

ALERTS = {
    "ShuffleNetThroughputLow",
    "ShuffleNetDataWaitHigh",
    "ShuffleNetJobRestarting",
    "ShuffleNetRankMissing",
}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_every_alert_fires_in_the_rule_tests() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == ALERTS  # each alert has a case where it must fire
    proc = promtool("test", "rules", RULES_TEST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    # The rule tests are not vacuous: a data-wait alert at 50% instead of 30% fails them.
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    rules_dir = tmp_path / "charts" / "shufflenet-operator" / "rules"
    rules_dir.mkdir(parents=True)
    broken = RULES.read_text().replace("ratio_rate5m > 0.3", "ratio_rate5m > 0.5")
    assert broken != RULES.read_text()
    (rules_dir / RULES.name).write_text(broken)
    shutil.copy(RULES_TEST, tmp_path / "tests" / "prometheus" / RULES_TEST.name)
    proc = promtool("test", "rules", tmp_path / "tests" / "prometheus" / RULES_TEST.name)
    assert proc.returncode != 0
    assert "ShuffleNetDataWaitHigh" in proc.stdout + proc.stderr
