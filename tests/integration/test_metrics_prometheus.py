"""Every dashboard query against a real Prometheus scraping a real two-rank training run.

Debian's Prometheus runs on loopback (free port, temporary data folder, 1 s scrapes, the
chart's recording and alert rules loaded) and scrapes both ranks of `shufflenet-train
--nproc 2` (gloo on CPU, ShuffleNetV2 x0.5 at 32 px on synthetic data). The static scrape
labels stand in for what the PodMonitor adds in a cluster (namespace, pod). Once Prometheus
has seen two finished epochs (checkpoints, validation) while the ranks still train, each
panel's PromQL is evaluated at that moment, with the template variables substituted as
Grafana would, and its values are checked for sense.

The operator's panels return no series here (no operator is scraped); their queries are
still run, so a syntax error in them fails here too. tests/k8s/test_operator_dashboard.py
checks their values against the real operator.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration import metrics_tools
from integration.metrics_tools import RULES, Prometheus, dashboard_targets, tool

NAMESPACE = "metrics-e2e"
JOB = "e2e-job"
RANKS = 2
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval); 10s covers
# a 1 s scrape on a loaded 2-core machine, where a scrape can come late.
RATE_INTERVAL = "10s"
EPOCHS = 6
TRAIN_ARGS = [
    "--dummy", "-a", "shufflenet_v2_x0_5", "--image-size", "32", "--val-resize", "32",
    "-j", "0", "-b", "8", "--epochs", str(EPOCHS), "--max-steps-per-epoch", "30",
    "--warmup-epochs", "1", "-p", "5", "--nproc", str(RANKS),
]  # fmt: skip


def free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are free on 127.0.0.1 (rank k: base + k)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        socks = []
        try:
            for k in range(count):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no run of free ports on 127.0.0.1")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, float]]:
    """Start Prometheus and the training run; yield once the run is far enough along."""
    tmp = tmp_path_factory.mktemp("prom")
    base = free_ports(RANKS)
    targets = [
        {
            "targets": [f"127.0.0.1:{base + k}"],
            "labels": {"namespace": NAMESPACE, "pod": f"{JOB}-rank-{k}"},
        }
        for k in range(RANKS)
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # honor_labels keeps the trainer's job/rank, as the PodMonitor's honorLabels does.
            {"job_name": "shufflenet-trainer", "honor_labels": True, "static_configs": targets}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_ports(1)
    prom_log = open(tmp / "prometheus.log", "w")  # noqa: SIM115
    prom = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    train_log = open(tmp / "train.log", "w")  # noqa: SIM115
    train: subprocess.Popen[bytes] | None = None
    try:
        api = Prometheus(prom_port)
        wait_for(lambda: api.ready(), 60, "Prometheus ready", tmp / "prometheus.log")
        env = {**os.environ, "JOB_NAME": JOB, "METRICS_ADDR": "127.0.0.1"}
        env.pop("RANK", None)
        env.pop("WORLD_SIZE", None)
        command = [sys.executable, "-m", "shufflenet_trainer.cli", *TRAIN_ARGS]
        command += ["--metrics-port", str(base), "--output-dir", str(tmp / "out")]
        train = subprocess.Popen(
            command,
            env=env,
            stdout=train_log,
            stderr=subprocess.STDOUT,
        )
        sel = f'{{job="{JOB}"}}'

        def far_enough() -> bool:
            if train.poll() is not None:
                raise AssertionError(
                    f"training ended ({train.returncode}) before Prometheus saw 2 epochs:\n"
                    + (tmp / "train.log").read_text()[-3000:]
                )
            epoch = api.values(f"min(shufflenet_train_epoch{sel})")
            ckpt = api.values(f"sum(shufflenet_checkpoint_seconds_count{sel})")
            ranks = api.values(f"count(shufflenet_train_info{sel})")
            fps = api.values(f"min(shufflenet_train_images_per_second{sel})")
            return (
                ranks.get("", 0) == RANKS
                and epoch.get("", 0) >= 2.3
                and ckpt.get("", 0) >= 2
                and fps.get("", 0) > 0
            )

        wait_for(far_enough, 420, "two epochs seen by Prometheus", tmp / "train.log")
        at = time.time()
        # A rule evaluation and a scrape after `at`, so every query sees settled data there.
        time.sleep(2.5)
        yield api, at
        code = train.wait(timeout=420)
        assert code == 0, (tmp / "train.log").read_text()[-3000:]
    finally:
        for proc in (train, prom):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        prom_log.close()
        train_log.close()


def wait_for(check: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def substitute(expr: str) -> str:
    return metrics_tools.substitute(expr, namespace=NAMESPACE, job=JOB, rate_interval=RATE_INTERVAL)


def one_job(values: dict[str, float]) -> float:
    assert list(values) == [f"job={JOB}"], values
    return values[f"job={JOB}"]


def per_rank(values: dict[str, float]) -> list[float]:
    assert sorted(values) == [f"job={JOB},rank={k}" for k in range(RANKS)], values
    return list(values.values())


def positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


# (panel title, refId) -> check of the instant vector at the moment of evaluation.
CHECKS: dict[tuple[str, str], Callable[[dict[str, float]], None]] = {}


def check(title: str, ref: str = "A") -> Callable[[Callable[[dict[str, float]], None]], Any]:
    def register(f: Callable[[dict[str, float]], None]) -> Callable[[dict[str, float]], None]:
        CHECKS[(title, ref)] = f
        return f

    return register


@check("Global images/s")
@check("Images/s per job")
def _(v: dict[str, float]) -> None:
    assert positive(one_job(v))


@check("Ranks reporting")
def _(v: dict[str, float]) -> None:
    assert one_job(v) == RANKS


@check("Ranks reporting", "B")
def _(v: dict[str, float]) -> None:
    assert one_job(v) == RANKS  # the world size


@check("Epoch progress")
def _(v: dict[str, float]) -> None:
    assert 2.3 / EPOCHS <= one_job(v) < 1


@check("ETA")
def _(v: dict[str, float]) -> None:
    assert 0 < one_job(v) < 3600  # seconds; the run is short


@check("Images/s per job", "B")
def _(v: dict[str, float]) -> None:
    assert positive(one_job(v))  # FPS@all


@check("Images/s per rank")
def _(v: dict[str, float]) -> None:
    assert all(positive(x) for x in per_rank(v))


@check("Step time p50 / p95")
@check("Step time p50 / p95", "B")
def _(v: dict[str, float]) -> None:
    assert 0 < one_job(v) < 60


@check("Step time p95 per rank")
def _(v: dict[str, float]) -> None:
    assert all(0 < x < 60 for x in per_rank(v))


@check("Data-wait share")
def _(v: dict[str, float]) -> None:
    assert 0 <= one_job(v) < 1


@check("Data-wait share", "B")
def _(v: dict[str, float]) -> None:
    assert all(0 <= x < 1 for x in per_rank(v))


@check("Training loss")
def _(v: dict[str, float]) -> None:
    assert 0 < one_job(v) < 20  # about ln(1000) = 6.9 for 1,000 synthetic classes


@check("Validation top-1 / top-5")
def _(v: dict[str, float]) -> None:
    assert 0 <= one_job(v) <= 100


@check("Validation top-1 / top-5", "B")
def _(v: dict[str, float]) -> None:
    assert 0 <= one_job(v) <= 100


@check("Learning rate")
def _(v: dict[str, float]) -> None:
    assert 0 < one_job(v) < 1


@check("Device memory per rank")
def _(v: dict[str, float]) -> None:
    assert all(1e7 < x < 1e11 for x in per_rank(v))  # bytes of a CPU rank's process


@check("Checkpoint time")
def _(v: dict[str, float]) -> None:
    assert 0 < one_job(v) < 60


@check("Runs")
def _(v: dict[str, float]) -> None:
    # One row per rank with the run's facts, and the scrape's namespace and pod.
    assert len(v) == RANKS and set(v.values()) == {1.0}, v
    for k, key in enumerate(sorted(v)):
        labels = dict(item.split("=", 1) for item in key.split(","))
        assert labels["rank"] == str(k) and labels["pod"] == f"{JOB}-rank-{k}"
        assert labels["namespace"] == NAMESPACE and labels["job"] == JOB
        assert labels["arch"] == "shufflenet_v2_x0_5" and labels["world_size"] == str(RANKS)
        assert labels["backend"] == "gloo" and labels["device_type"] == "cpu"
        assert labels["amp"] == "off"


@check("Last restart in place, by phase")
def _(v: dict[str, float]) -> None:
    assert v == {}, v  # no training process restarted in place in this run


OPERATOR_PANELS = {
    "Jobs by phase",
    "Job restarts",
    "Operator reconcile p95",
    "Goodput",
    "Recovery time by tier",
}


def test_every_panel_query_is_checked() -> None:
    titles = {(title, ref) for title, ref, _ in dashboard_targets()}
    unchecked = {t for t in titles if t not in CHECKS and t[0] not in OPERATOR_PANELS}
    assert not unchecked, f"add a value check for {sorted(unchecked)}"
    assert set(CHECKS) <= titles


@pytest.mark.slow
def test_panel_queries_on_a_real_run(run: tuple[Prometheus, float]) -> None:
    api, at = run
    failures = []
    for title, ref, expr in dashboard_targets():
        values = api.values(substitute(expr), at)
        print(f"{title} [{ref}]: {values}")  # shown when the test fails
        if title in OPERATOR_PANELS:
            assert values == {}, (title, values)  # no operator yet: valid, and empty
            continue
        try:
            CHECKS[(title, ref)](values)
        except AssertionError as exc:
            failures.append(f"{title} [{ref}]: {substitute(expr)} -> {values} {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_template_variable_queries(run: tuple[Prometheus, float]) -> None:
    # Grafana's label_values(metric{...}, label) is the label values API with a match[].
    api, at = run
    window = {"start": f"{at - 300:.3f}", "end": f"{at:.3f}"}
    namespaces = api.get(
        "/api/v1/label/namespace/values", **{"match[]": "shufflenet_train_info"}, **window
    )
    assert NAMESPACE in namespaces
    jobs = api.get(
        "/api/v1/label/job/values",
        **{"match[]": substitute('shufflenet_train_info{namespace=~"$namespace"}')},
        **window,
    )
    assert jobs == [JOB]


@pytest.mark.slow
def test_recording_rules_and_alerts_on_real_series(run: tuple[Prometheus, float]) -> None:
    api, at = run
    rate = api.values(f'job:shufflenet_train_images:rate5m{{job="{JOB}"}}', at)
    assert positive(rate[f"job={JOB},namespace={NAMESPACE}"])
    share = api.values(f'job:shufflenet_train_data_wait:ratio_rate5m{{job="{JOB}"}}', at)
    assert 0 <= share[f"job={JOB},namespace={NAMESPACE}"] < 1
    # Both ranks report: the missing-rank alert is not even pending.
    alerts = api.values('ALERTS{alertname="ShuffleNetRankMissing"}', at)
    assert alerts == {}
