"""The dashboard's operator panels against a real Prometheus scraping the real operator.

The operator runs as in test_operator.py (its own process against the test control plane,
the SIMULATED node agent playing the nodes); one rank of a two-rank job exits 143, so the
job restarts once and runs again; rank 0's metrics are the trainer's exporter, served by the
test on the pod's IP (its training seconds give goodput, its first step the recovery's
time). Debian's Prometheus scrapes the operator's metrics endpoint every second, labelled
as the chart's operator PodMonitor would label it; then every operator panel's PromQL, with
the template variables substituted as Grafana would, is evaluated at one instant and its
values are checked for sense.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from integration import metrics_tools
from integration.metrics_tools import Prometheus, dashboard_targets, tool
from kubernetes import client
from sim.node_agent import NodeAgent, wait_for

from k8s.cluster import ControlPlane
from k8s.operator_harness import (
    Jobs,
    OperatorProcess,
    free_port,
    install_crd,
    job_manifest,
    serve_rank_0,
)
from shufflenet_contract import crd

JOB = "dash"
# The operator pod's own namespace and pod name, as the PodMonitor's target labels give them.
OPERATOR_NAMESPACE = "shufflenet-system"
OPERATOR_POD = "shufflenet-operator-0"
# Grafana's $__rate_interval for a 1 s scrape, with room for late scrapes on a busy machine
# (as in tests/integration/test_metrics_prometheus.py).
RATE_INTERVAL = "10s"
OPERATOR_PANELS = {
    "Jobs by phase",
    "Job restarts",
    "Operator reconcile p95",
    "Goodput",
    "Recovery time by tier",
}


def operator_targets() -> list[tuple[str, str, str]]:
    return [t for t in dashboard_targets() if t[0] in OPERATOR_PANELS]


def substitute(expr: str, namespace: str) -> str:
    return metrics_tools.substitute(expr, namespace=namespace, job=JOB, rate_interval=RATE_INTERVAL)


def _jobs_by_phase(v: dict[str, float]) -> None:
    # Every phase is exported (0 included); the one job is counted in Running.
    assert v == {f"phase={p}": (1.0 if p == "Running" else 0.0) for p in crd.PHASES}, v


def _job_restarts(v: dict[str, float]) -> None:
    assert v == {f"job={JOB}": 1.0}, v


def _reconcile_p95(v: dict[str, float]) -> None:
    assert len(v) == 1, v  # one series: the panel sums over every label but `le`
    (p95,) = v.values()
    assert math.isfinite(p95) and 0 < p95 <= 10, v  # seconds, within the histogram's buckets


def _goodput(v: dict[str, float]) -> None:
    assert set(v) == {f"job={JOB}"} and 0 < v[f"job={JOB}"] <= 1, v


def _recovery_time(v: dict[str, float]) -> None:
    # The one whole-job restart, failure to first step: the backoff, new pods, a scrape.
    assert set(v) == {f"job={JOB},tier=3"} and 0 < v[f"job={JOB},tier=3"] < 60, v


CHECKS: dict[tuple[str, str], Callable[[dict[str, float]], None]] = {
    ("Jobs by phase", "A"): _jobs_by_phase,
    ("Job restarts", "A"): _job_restarts,
    ("Operator reconcile p95", "A"): _reconcile_p95,
    ("Goodput", "A"): _goodput,
    ("Recovery time by tier", "A"): _recovery_time,
}


def test_every_operator_panel_query_is_checked() -> None:
    targets = {(title, ref) for title, ref, _ in operator_targets()}
    assert {title for title, _ in targets} == OPERATOR_PANELS
    # No other panel reads the operator's metrics (it would go unchecked here).
    others = [t for t in dashboard_targets() if t[0] not in OPERATOR_PANELS]
    assert not [t for t in others if "shufflenet_operator_" in t[2]]
    assert targets == set(CHECKS)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, Path, Callable[[int], None]]]:
    """Debian's Prometheus on loopback; call the third item with the operator's metrics port
    to write its scrape config and start it."""
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    log = tmp_path / "prometheus.log"

    def start(metrics_port: int) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "shufflenet-operator",
                    # As the PodMonitor's honorLabels: the operator's `namespace` and `job`
                    # (the training job's) win over the target's own.
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{metrics_port}"],
                            # What the PodMonitor adds as target labels in a cluster: the
                            # operator pod's namespace and name.
                            "labels": {"namespace": OPERATOR_NAMESPACE, "pod": OPERATOR_POD},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        tool("prometheus"),
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    api = Prometheus(port)
    try:
        yield api, log, start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# `node_agent` before the operator: fixtures are torn down in reverse, so the operator stops
# before the simulated nodes delete their pods (see test_operator.py).
def test_operator_panels_on_the_real_operator(
    node_agent: NodeAgent,
    control_plane: ControlPlane,
    k8s_api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    prometheus: tuple[Prometheus, Path, Callable[[int], None]],
) -> None:
    api, prom_log, start_prometheus = prometheus
    install_crd(control_plane.api)
    op = OperatorProcess(control_plane, namespace, tmp_path)
    op.start()
    try:
        start_prometheus(op.metrics_port)
        wait_for(api.ready, timeout=60, what="Prometheus ready")

        jobs = Jobs(k8s_api, namespace)
        node_agent.add_node(npus=8)
        port = free_port()
        jobs.create(job_manifest(JOB, count=2, metrics={"port": port}))
        jobs.wait_phase(JOB, "Running")
        # Rank 0 trains and is scraped (goodput), and steps again after the restart (the
        # recovery's first step).
        serve_rank_0(jobs, JOB, port, resumed=0, steps=4).close()
        node_agent.finish(jobs.pods(JOB)[1], exit_code=143)
        wait_for(lambda: jobs.status(JOB).get("restarts") == 1, what="restarts == 1")
        jobs.wait_phase(JOB, "Running")
        rank_0 = serve_rank_0(jobs, JOB, port, resumed=0, steps=1)
        wait_for(
            lambda: "firstStepSeconds" in jobs.status(JOB)["recoveries"][-1],
            timeout=30,
            what="the first step after the restart",
        )
        rank_0.close()

        # Every panel checked at one evaluation instant, once Prometheus has scraped the
        # restarted, running job (a few scrapes after the restart).
        targets = operator_targets()
        last: dict[str, object] = {}

        def all_sensible() -> bool:
            last.clear()
            at = time.time()
            ok = True
            for title, ref, expr in targets:
                values = api.values(substitute(expr, namespace), at)
                last[f"{title} [{ref}]"] = values
                try:
                    CHECKS[(title, ref)](values)
                except AssertionError as exc:
                    last[f"{title} [{ref}] failed"] = str(exc)
                    ok = False
            return ok

        try:
            wait_for(all_sensible, timeout=30, interval=1, what="sensible operator panels")
        except Exception as exc:
            raise AssertionError(
                f"{exc}\nlast values: {last}\n{prom_log.read_text()[-2000:]}\n{op.logs()}"
            ) from exc
        print({k: v for k, v in last.items() if not k.endswith("failed")})

        # The namespace variable's "All" (.*) sees the same job.
        restarts = next(e for t, _, e in targets if t == "Job restarts")
        assert api.values(substitute(restarts, ".*")) == {f"job={JOB}": 1.0}
    finally:
        op.stop()
