"""status.progress: what rank 0's metrics endpoint says about the run.

The trainer exports its epoch, throughput (FPS@all: the whole job's images/s) and validation
accuracy on every rank; rank 0's values stand for the job. `parse` and `endpoint` are pure;
`scrape` does the HTTP GET and returns None on any failure: progress is informative, and an
unreachable endpoint (a pod starting, a network policy) must not disturb reconciling.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import status as st

log = logging.getLogger(__name__)

# Trainer metric -> status.progress field, and the decimals kept (no status write for noise).
FIELDS = {
    "shufflenet_train_epoch": ("epoch", 2),
    "shufflenet_train_images_per_second": ("imagesPerSecond", 1),
    "shufflenet_val_top1": ("top1", 2),
}
SCRAPE_TIMEOUT_S = 2.0


def parse(text: str) -> dict[str, float]:
    """The progress fields rank 0 reports in a Prometheus text exposition."""
    progress: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = FIELDS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.labels.get("rank") == "0" and sample.value == sample.value:  # not NaN
                progress[field[0]] = round(float(sample.value), field[1])
    return progress


def endpoint(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str | None:
    """URL of rank 0's metrics: the first pod's IP (its local rank 0) and spec.metrics.port."""
    port = ((job.get("spec") or {}).get("metrics") or {}).get("port")
    for pod in pods:
        if st.pod_rank(pod) == 0 and not st.is_deleting(pod) and st.pod_phase(pod) == "Running":
            ip = (pod.get("status") or {}).get("podIP")
            if ip and port:
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{int(port)}/metrics"
    return None


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse(response.read().decode("utf-8", errors="replace")) or None
    except (OSError, ValueError) as exc:
        log.debug("progress: %s not scraped: %s", url, exc)
        return None
