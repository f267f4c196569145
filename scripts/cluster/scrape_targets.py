"""Prometheus scrape targets of the test cluster's pods, as the chart's PodMonitors select them.

Debian's prometheus is built without Kubernetes service discovery, so the cluster's
Prometheus (scripts/cluster/prometheus.sh) reads a `file_sd_configs` file that this program
keeps in step with the API's pods (Prometheus re-reads the file when it changes):

- every `metrics` / `metrics-<k>` port of every rank pod (label training.shufflenet.io/job-name),
  labelled `job` (the training job) and `rank` (the pod's), as the trainer PodMonitor does;
- the operator's `metrics` port (label app.kubernetes.io/name=shufflenet-operator).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from api_poll import add_api_args, api_from, poll, write_atomic

JOB_LABEL = "training.shufflenet.io/job-name"
RANK_LABEL = "training.shufflenet.io/rank"
OPERATOR = ("app.kubernetes.io/name", "shufflenet-operator")
RANK_PORT = re.compile(r"metrics(-[0-9]+)?")


def _ports(pod: Mapping[str, Any], name: re.Pattern[str]) -> list[int]:
    return [
        int(port["containerPort"])
        for c in pod["spec"].get("containers", [])
        for port in c.get("ports") or []
        if name.fullmatch(port.get("name", ""))
    ]


def scrape_targets(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for the running pods that the PodMonitors would scrape."""
    groups = []
    for pod in pods:
        meta, ip = pod["metadata"], pod.get("status", {}).get("podIP")
        if not ip or pod["status"].get("phase") != "Running":
            continue
        labels = meta.get("labels") or {}
        base = {"namespace": meta["namespace"], "pod": meta["name"]}
        if JOB_LABEL in labels:
            job = {"job": labels[JOB_LABEL], "rank": labels.get(RANK_LABEL, "")}
            ports = _ports(pod, RANK_PORT)
        elif labels.get(OPERATOR[0]) == OPERATOR[1]:
            job, ports = {"job": "shufflenet-operator"}, _ports(pod, re.compile("metrics"))
        else:
            continue
        if ports:
            groups.append({"targets": [f"{ip}:{p}" for p in ports], "labels": {**base, **job}})
    return sorted(groups, key=lambda g: g["targets"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_api_args(p)
    p.add_argument("--out", required=True, help="the file_sd JSON file")
    args = p.parse_args(argv)
    api = api_from(args)

    def publish(text: str) -> bool:
        write_atomic(args.out, text)
        return True

    poll(
        "scrape-targets",
        lambda: json.dumps(scrape_targets(api.items("/api/v1/pods")), indent=1),
        publish,
        args.interval,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
