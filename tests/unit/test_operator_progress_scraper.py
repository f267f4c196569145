"""Operator: rank 0's progress scraped within a deadline and a size, off the reconcile workers.

Real HTTP servers on 127.0.0.1 (http.server in a thread, the trainer's own exporter) play
rank 0: slow, endless, huge, or answering. Time is measured only with wide margins: what the
tests assert is what finished while a server still held its connection.
"""

from __future__ import annotations

import copy
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from helpers.http_server import Server, endless, serve
from helpers.jobs import job_manifest
from prometheus_client import generate_latest

from shufflenet_operator import controller, policy, progress
from shufflenet_operator.observed import Observed
from shufflenet_operator.scraper import Scraper, pause
from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.train.config import parse_config

KEY = ("ns", "sn")
# Far more than any bounded scrape here takes; what a stalled one would exceed.
GENEROUS_S = 20.0


def epoch_record(epoch: int, **values: float) -> dict[str, float]:
    """What the training loop hands the exporter at the end of `epoch` (0-based)."""
    record = {"loss": 1.0, "images_per_sec": 250.0, "val_top1": 10.0, "val_top5": 30.0}
    return {**record, **values, "epoch": epoch}


def exporter(epoch: int) -> MetricsExporter:
    """Rank 0's exporter as the trainer runs it, after `epoch` (0-based) ended."""
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=2, rank=0)
    exp = MetricsExporter(cfg, {"JOB_NAME": "sn"})
    exp.on_start({"folder": None, "device": "cpu", "epochs": 4, "steps_per_epoch": 10})
    exp.on_epoch(epoch_record(epoch))
    return exp


RANK_0 = exporter(1)
PAGE = generate_latest(RANK_0.registry)
SHOWN = {"epoch": 2.0, "imagesPerSecond": 250.0, "top1": 10.0}  # status.progress
PAGE_PROGRESS = {
    **SHOWN,
    # What goodput and status.recoveries read (test_operator_recoveries.py): no step yet.
    "trainSeconds": 0.0,
    "globalStep": 0.0,
    "resumedStep": 0.0,
    "processStart": round(RANK_0.start_time.labels("sn", "0")._value.get(), 3),
}


def page(handler: BaseHTTPRequestHandler, server: Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PAGE)))
    handler.end_headers()
    handler.wfile.write(PAGE)


def held(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """The page, once the server is released (closed): a rank 0 that hangs till then."""
    server.release.wait(60)
    page(handler, server)


def huge(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """A body without end, as fast as the connection takes it."""
    handler.send_response(200)
    handler.end_headers()
    line = b"# HELP padding " + b"x" * 4000 + b"\n"
    while True:
        handler.wfile.write(line)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started


# -- one scrape: bounded in time and size --------------------------------------------------


def test_a_page_is_scraped() -> None:
    with serve(page) as server:
        assert progress.scrape(server.url) == PAGE_PROGRESS


def test_the_trainers_own_server_is_scraped() -> None:
    exp = exporter(2)
    port = exp.start(0, addr="127.0.0.1")
    try:
        assert progress.scrape(f"http://127.0.0.1:{port}/metrics")["epoch"] == 3.0  # type: ignore[index]
    finally:
        exp.close()


def test_an_endpoint_that_does_not_answer_in_time_gives_no_progress() -> None:
    with serve(held) as server:
        found, took = timed(lambda: progress.scrape(server.url, deadline=1))
        # The server still holds the GET (released only at the end): the deadline ended it.
        assert found is None and server.open == 1 and took < GENEROUS_S


def test_an_answer_that_never_ends_is_cut_off_at_the_deadline() -> None:
    # Every read gets a byte well within any per-read timeout; the whole never completes.
    with serve(endless) as server:
        found, took = timed(lambda: progress.scrape(server.url, deadline=1))
        assert found is None and took < GENEROUS_S
        with pytest.raises(TimeoutError, match="within 1s"):
            progress.fetch(server.url, deadline=1)


def test_a_huge_answer_is_read_up_to_the_cap_only(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[int] = []
    recv = socket.socket.recv
    me = threading.get_ident()

    def counted(sock: socket.socket, *args: Any) -> bytes:
        data = recv(sock, *args)
        if threading.get_ident() == me:
            received.append(len(data))
        return data

    monkeypatch.setattr(socket.socket, "recv", counted)
    with serve(huge) as server:
        # A long deadline: what ends the scrape is the cap.
        found, took = timed(lambda: progress.scrape(server.url, deadline=60, max_bytes=100_000))
        assert found is None and took < GENEROUS_S
        assert 0 < sum(received) <= 100_000
        with pytest.raises(ValueError, match="larger than 100000 bytes"):
            progress.fetch(server.url, deadline=60, max_bytes=100_000)
    # A page under the cap is read whole.
    with serve(page) as server:
        assert progress.scrape(server.url, max_bytes=len(PAGE) + 1000) == PAGE_PROGRESS


def test_errors_give_no_progress() -> None:
    def error(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_error(500)

    with serve(error) as server:
        assert progress.scrape(server.url) is None
        with pytest.raises(ValueError, match="HTTP 500"):
            progress.fetch(server.url)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = unused.getsockname()[1]
        assert progress.scrape(f"http://127.0.0.1:{port}/metrics", deadline=1) is None
    assert progress.scrape("https://127.0.0.1/metrics") is None


# -- the scraper: pacing, results, forgetting, stopping -----------------------------------


def test_a_silent_endpoint_is_asked_less_and_less_often() -> None:
    assert [pause(30, m) for m in range(6)] == [30, 60, 120, 240, 300, 300]
    assert pause(700, 3) == 700  # never below the interval
    assert pause(30, 10_000) == 300  # a week of misses does not overflow
    now = [0.0]
    scraper = Scraper(30, clock=lambda: now[0])
    scraper.watch(KEY, "http://127.0.0.1:1/metrics")
    asked = []
    for answers in (True, False, False, False, True, True):
        key, entry = scraper._claim()  # type: ignore[misc]  # due now: returns at once
        asked.append(now[0])
        scraper._record(key, entry, {"epoch": 1.0} if answers else None, now[0])
        now[0] = entry.due
    assert asked == [0, 30, 90, 210, 450, 480]


def test_progress_found_in_the_background_is_taken_once() -> None:
    found = threading.Event()
    with serve(page) as server:
        scraper = Scraper(0.05, found=lambda key: found.set())
        scraper.start()
        try:
            scraper.watch(KEY, server.url)
            assert found.wait(GENEROUS_S)
        finally:
            scraper.stop()
        assert scraper.take(KEY) == PAGE_PROGRESS
        assert scraper.take(KEY) is None  # taken
        scraper.watch(KEY, None)
        assert scraper.watched() == []


def test_stop_ends_the_scrapes_even_one_under_way() -> None:
    with serve(held) as server:
        scraper = Scraper(0.05, scrape=functools.partial(progress.scrape, deadline=1))
        scraper.start()
        scraper.watch(KEY, server.url)
        wait_for(lambda: server.open == 1)
        scraper.stop()
        alive = [t.name for t in threading.enumerate() if t.name.startswith("progress-scrape")]
        assert alive == []


def wait_for(check: Callable[[], Any], timeout: float = GENEROUS_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)
    return value


# -- the controller: a slow rank 0 delays no reconcile --------------------------------------


class Kube:
    """Just enough of an API server for a Controller: jobs, the pods they create (running at
    once on 127.0.0.1, as a kubelet would start them), status writes; each write enqueues the
    job, as its watch event would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed: Callable[[str, str], None] = lambda ns, name: None

    def add(self, name: str, port: int) -> None:
        self.jobs[name] = job_manifest(
            name,
            metadata={"namespace": "ns", "uid": f"uid-{name}"},
            devices={"type": "cpu", "count": 2},
            training={"batchSize": 16},
            metrics={"port": port},
        )

    def delete(self, name: str) -> None:
        with self.lock:
            del self.jobs[name]
            self.pods = {k: p for k, p in self.pods.items() if not k.startswith(f"{name}-")}

    def status(self, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.jobs[name].get("status") or {})

    def observe(self, namespace: str, name: str) -> Observed | None:
        with self.lock:
            job = self.jobs.get(name)
            if job is None:
                return None
            return Observed(
                copy.deepcopy(job),
                [copy.deepcopy(p) for k, p in self.pods.items() if k.startswith(f"{name}-")],
                service=self.children.get((name, "Service")),
                configmap=self.children.get((name, "ConfigMap")),
                has_podgroup=(name, "PodGroup") in self.children,
            )

    def apply(self, job: dict[str, Any], plan: policy.Plan, now: datetime) -> None:
        name = job["metadata"]["name"]
        with self.lock:
            for manifest in plan.create:
                m = copy.deepcopy(manifest)
                m["metadata"]["uid"] = f"uid-{m['metadata']['name']}"
                if m["kind"] == "Pod":
                    m["spec"]["nodeName"] = "node-0"
                    m["status"] = {"phase": "Running", "podIP": "127.0.0.1"}
                    self.pods[m["metadata"]["name"]] = m
                else:
                    self.children[(name, m["kind"])] = m
            changed = bool(plan.create) or plan.status != self.jobs[name].get("status")
            self.jobs[name]["status"] = copy.deepcopy(plan.status)
        if changed:
            self.changed("ns", name)


@contextmanager
def running(kube: Kube, **options: Any) -> Iterator[controller.Controller]:
    """A Controller on `kube`, its workers and scraper started; stopped at the end."""
    ctl = controller.Controller(kube, policy.Settings(), **options)  # type: ignore[arg-type]
    kube.changed = ctl.enqueue
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()


def test_a_rank_0_that_hangs_delays_no_other_jobs_reconcile() -> None:
    kube = Kube()
    fast = exporter(0)
    kube.add("fast", fast.start(0, addr="127.0.0.1"))
    # One reconcile worker, and a scrape deadline longer than the test: before, the slow
    # job's reconcile held the only worker for as long as its rank 0 held the GET.
    slow_scrape = functools.partial(progress.scrape, deadline=60)
    options = {"progress_seconds": 0.05, "workers": 1, "scrape": slow_scrape}
    with running(kube, **options) as ctl, serve(held) as slow:
        kube.add("slow", slow.port)
        ctl.enqueue("ns", "slow")
        wait_for(lambda: slow.open == 1)  # slow's rank 0 holds a scrape
        ctl.enqueue("ns", "fast")
        wait_for(lambda: kube.status("fast").get("progress", {}).get("epoch") == 1.0)
        fast.on_epoch(epoch_record(1, images_per_sec=300.0, val_top1=20.0))
        wait_for(lambda: kube.status("fast").get("progress", {}).get("epoch") == 2.0)
        # The slow job is reconciled too: gone, it is forgotten, scraper entry and all.
        kube.delete("slow")
        ctl.enqueue("ns", "slow")
        wait_for(lambda: ("ns", "slow") not in ctl.scraper.watched())
        # All of this while slow's rank 0 still held its GET.
        assert slow.open == 1 and slow.connections == 1
        assert kube.status("fast")["progress"] == {
            "epoch": 2.0,
            "imagesPerSecond": 300.0,
            "top1": 20.0,
        }
    fast.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("progress-scrape")]


def test_a_job_that_stops_running_is_no_longer_scraped() -> None:
    kube = Kube()
    with serve(page) as server, running(kube, progress_seconds=0.05) as ctl:
        kube.add("sn", server.port)
        ctl.enqueue("ns", "sn")
        wait_for(lambda: kube.status("sn").get("progress") == SHOWN)
        assert ctl.scraper.watched() == [KEY]
        exited = {"terminated": {"exitCode": 0}}
        with kube.lock:
            for pod in kube.pods.values():
                pod["status"] = {
                    "phase": "Succeeded",
                    "containerStatuses": [{"name": "trainer", "state": exited}],
                }
        ctl.enqueue("ns", "sn")
        wait_for(lambda: kube.status("sn").get("phase") == "Succeeded")
        ctl.enqueue("ns", "sn")  # a look at the finished job
        wait_for(lambda: ctl.scraper.watched() == [])
        # Where it ended: spec.training.epochs (policy's default, 240), not the scrape.
        assert kube.status("sn")["progress"]["epoch"] == 240.0


def test_progress_off_scrapes_nothing() -> None:
    kube = Kube()
    with serve(page) as server, running(kube, progress_seconds=0) as ctl:
        kube.add("sn", server.port)
        ctl.enqueue("ns", "sn")
        wait_for(lambda: kube.status("sn").get("phase") == "Running")
        assert ctl.scraper.watched() == [] and server.connections == 0
