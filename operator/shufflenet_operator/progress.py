"""status.progress: what rank 0's metrics endpoint says about the run.

The trainer exports its epoch, throughput (FPS@all: the whole job's images/s) and validation
accuracy on every rank; rank 0's values stand for the job. `parse` and `endpoint` are pure;
`scrape` does the HTTP GET and returns None on any failure: progress is informative, and an
unreachable endpoint (a pod starting, a network policy) must not disturb reconciling. A GET
is bounded in all: DEADLINE_S for the whole exchange (not per read: a rank 0 that dribbles
a byte at a time, or streams without end, is cut off too) and MAX_BYTES for the answer.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import time
import urllib.parse
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
# Rank 0's samples -> what recoveries.scraped reads (goodput, recoveries), decimals kept.
SAMPLES = {
    "shufflenet_train_seconds_total": ("trainSeconds", 3),
    "shufflenet_train_global_step": ("globalStep", 0),
    "shufflenet_train_resumed_step": ("resumedStep", 0),
    "shufflenet_train_first_step_timestamp_seconds": ("firstStepAt", 3),
    # Which training process the counters are of (a restart starts another).
    "shufflenet_train_start_timestamp_seconds": ("processStart", 3),
}
# A restart in place that started rank 0's training process: shufflenet_recovery_info's
# labels, and shufflenet_recovery_seconds' _sum by phase (one observation per process).
RECOVERY_PHASES = {
    "rendezvous": "rendezvousSeconds",
    "checkpoint_loaded": "checkpointLoadedSeconds",
    "first_step": "firstStepSeconds",
}
# A whole scrape, connect to last byte. Rank 0's page is rendered by a thread of the
# training process (prometheus_client's server), which may wait for the GIL behind a busy
# loop: a few seconds, as Prometheus' own default scrape_timeout (10 s) allows for.
DEADLINE_S = 5.0
# The trainer's page for one rank is about 7 KiB; an answer this large is not it.
MAX_BYTES = 256 * 1024


def parse(text: str) -> dict[str, Any]:
    """The progress fields rank 0 reports in a Prometheus text exposition, and what its
    training process says of its training time and the recovery that started it
    (recoveries.SCRAPED)."""
    progress: dict[str, Any] = {}
    recovery: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        field = FIELDS.get(family.name)
        for sample in family.samples:
            if sample.labels.get("rank") != "0" or sample.value != sample.value:  # NaN
                continue
            if field is not None:
                progress[field[0]] = round(float(sample.value), field[1])
            elif sample.name in SAMPLES:
                key, decimals = SAMPLES[sample.name]
                progress[key] = round(float(sample.value), decimals)
            else:
                _recovery_sample(recovery, sample.name, sample.labels, float(sample.value))
    if "failedAt" in recovery and "generation" in recovery:
        progress["recovery"] = recovery
    return progress


def _recovery_sample(
    recovery: dict[str, Any], name: str, labels: Mapping[str, str], value: float
) -> None:
    if name == "shufflenet_recovery_info" and labels.get("failed_at"):
        recovery["generation"] = int(labels.get("generation") or 0)
        recovery["cause"] = labels.get("cause") or "unknown"
        recovery["failedAt"] = float(labels["failed_at"])
    elif name == "shufflenet_recovery_seconds_sum" and labels.get("phase") in RECOVERY_PHASES:
        recovery[RECOVERY_PHASES[labels["phase"]]] = round(value, 3)


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


def scrape(
    url: str, deadline: float = DEADLINE_S, max_bytes: int = MAX_BYTES
) -> dict[str, Any] | None:
    """Rank 0's progress at `url`; None when it does not answer in time, in size, or at all."""
    try:
        return parse(fetch(url, deadline, max_bytes).decode("utf-8", errors="replace")) or None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.debug("progress: %s not scraped: %s", url, exc)
        return None


def fetch(url: str, deadline: float = DEADLINE_S, max_bytes: int = MAX_BYTES) -> bytes:
    """The body of `GET url` (http://IP:PORT/PATH), all of it within `deadline` seconds and
    `max_bytes` bytes, else TimeoutError or ValueError.

    urllib's timeout bounds each socket operation, not the request: an answer that keeps
    coming slower than that never times out. Here every read waits only for what is left of
    the deadline and asks for no more than is left of the cap. The request is HTTP/1.0, so
    the answer ends when the server closes (no chunked encoding, RFC 9112 section 6.1), and
    http.client parses what was read.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"not an http://HOST:PORT/ URL: {url}")
    end = time.monotonic() + deadline

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    answer = bytearray()
    try:
        # The host is a pod IP (endpoint()): no name lookup, which no timeout would bound.
        with socket.create_connection((parts.hostname, parts.port), timeout=left()) as sock:
            request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
            sock.sendall(request.encode("ascii"))  # the timeout bounds it all (Python 3.5+)
            while len(answer) < max_bytes:
                sock.settimeout(left())
                chunk = sock.recv(min(max_bytes - len(answer), 64 * 1024))
                if not chunk:
                    break
                answer += chunk
            else:
                raise ValueError(f"answer larger than {max_bytes} bytes")
    except TimeoutError:
        raise TimeoutError(f"no whole answer within {deadline:g}s") from None
    response = http.client.HTTPResponse(_Received(bytes(answer)))  # type: ignore[arg-type]
    response.begin()
    if response.status != 200:
        raise ValueError(f"HTTP {response.status} {response.reason}")
    return response.read()


class _Received:
    """An answer already read, as http.client.HTTPResponse reads one from a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)
