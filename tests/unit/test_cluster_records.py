"""The real node's DNS records and Prometheus targets, computed from API objects.

scripts/cluster/dns_sync.py feeds dnsmasq the names a rank resolves (MASTER_ADDR is rank
0's `<pod>.<service>.<ns>.svc`); scripts/cluster/scrape_targets.py gives Prometheus what the
chart's PodMonitors would select. Both run against the real cluster in tests/k8s and
`make demo-cluster`; here, their rules.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "cluster"


@pytest.fixture(scope="module")
def scripts() -> Iterator[dict[str, ModuleType]]:
    # The scripts import their shared helper (api_poll) as the interpreter does for a
    # script: from their own folder.
    sys.path.insert(0, str(SCRIPTS))
    try:
        import dns_sync
        import scrape_targets

        yield {"dns": dns_sync, "targets": scrape_targets}
    finally:
        sys.path.remove(str(SCRIPTS))


def service(ns: str, name: str, cluster_ip: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": cluster_ip}}


def endpoints(ns: str, name: str, *addresses: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "subsets": [{"addresses": list(addresses)}],
    }


def test_hosts_file_names_services_and_the_rank_pods_of_headless_services(
    scripts: dict[str, ModuleType],
) -> None:
    text = scripts["dns"].hosts_file(
        [service("default", "kubernetes", "10.96.0.1"), service("t", "job", "None")],
        [
            # The `kubernetes` endpoints are not a headless Service's: no records from them.
            endpoints("default", "kubernetes", {"ip": "10.200.0.2"}),
            endpoints(
                "t",
                "job",
                {"ip": "10.244.0.5", "hostname": "job-rank-0"},
                {"ip": "10.244.0.6", "hostname": "job-rank-1"},
            ),
        ],
        "cluster.local",
    )
    assert text.splitlines() == [
        "10.244.0.5 job-rank-0.job.t.svc.cluster.local",
        "10.244.0.6 job-rank-1.job.t.svc.cluster.local",
        "10.244.0.5 job.t.svc.cluster.local",
        "10.244.0.6 job.t.svc.cluster.local",
        "10.96.0.1 kubernetes.default.svc.cluster.local",
    ]


def pod(name: str, labels: dict[str, str], ports: list[dict[str, Any]], **status: str) -> dict:
    return {
        "metadata": {"namespace": "t", "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": "10.244.0.9", **status},
    }


def test_scrape_targets_follow_the_podmonitors(scripts: dict[str, ModuleType]) -> None:
    rank_labels = {"training.shufflenet.io/job-name": "j", "training.shufflenet.io/rank": "1"}
    ports = [
        {"name": "metrics", "containerPort": 9400},
        {"name": "metrics-1", "containerPort": 9401},
        {"name": "rendezvous", "containerPort": 29500},
    ]
    groups = scripts["targets"].scrape_targets(
        [
            pod("j-node-1", rank_labels, ports),
            pod("pending", rank_labels, ports, phase="Pending"),
            pod("other", {"app": "x"}, [{"name": "metrics", "containerPort": 1}]),
            pod(
                "op",
                {"app.kubernetes.io/name": "shufflenet-operator"},
                [
                    {"name": "metrics", "containerPort": 8080},
                    {"name": "healthz", "containerPort": 8081},
                ],
            ),
        ]
    )
    assert json.loads(json.dumps(groups)) == [
        {
            "targets": ["10.244.0.9:8080"],
            "labels": {"namespace": "t", "pod": "op", "job": "shufflenet-operator"},
        },
        {
            # Every rank of a pod of several devices: `metrics` and `metrics-<k>`.
            "targets": ["10.244.0.9:9400", "10.244.0.9:9401"],
            "labels": {"namespace": "t", "pod": "j-node-1", "job": "j", "rank": "1"},
        },
    ]
