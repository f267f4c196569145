"""Operator: status.progress from rank 0's metrics (parse and endpoint are pure; the scrape
itself: test_operator_progress_scraper.py)."""

from __future__ import annotations

from prometheus_client import generate_latest

from shufflenet_operator import progress, render
from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.train.config import parse_config


def exposition(rank: int, **record: float) -> str:
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=2, rank=rank)
    exporter = MetricsExporter(cfg, {"JOB_NAME": "sn"})
    exporter.on_start({"folder": None, "device": "cpu", "epochs": 4, "steps_per_epoch": 10})
    if record:
        exporter.on_epoch({"loss": 1.0, "val_top5": 50.0, **record})
    return generate_latest(exporter.registry).decode()


def shown(text: str) -> dict[str, float]:
    """status.progress' fields of a parse (the rest: test_operator_recoveries.py)."""
    fields = {name for name, _ in progress.FIELDS.values()}
    return {k: v for k, v in progress.parse(text).items() if k in fields}


def test_progress_comes_from_the_trainers_own_exposition() -> None:
    text = exposition(0, epoch=2, images_per_sec=2213.456, val_top1=31.234)
    assert shown(text) == {"epoch": 3.0, "imagesPerSecond": 2213.5, "top1": 31.23}


def test_before_any_epoch_only_what_exists_is_reported() -> None:
    # No accuracy before the first evaluation (the trainer exports no series for it).
    assert shown(exposition(0)) == {"epoch": 0.0, "imagesPerSecond": 0.0}


def test_only_rank_0_counts() -> None:
    assert progress.parse(exposition(1, epoch=0, images_per_sec=5.0, val_top1=1.0)) == {}


def pod(rank: int, phase: str = "Running", ip: str | None = "127.2.1.5") -> dict:
    status = {"phase": phase, **({"podIP": ip} if ip else {})}
    return {"metadata": {"labels": {render.RANK_LABEL: str(rank)}}, "status": status}


def test_endpoint_is_rank_0s_pod_ip_and_the_jobs_metrics_port() -> None:
    job = {"spec": {"metrics": {"port": 9400}}}
    assert progress.endpoint(job, [pod(1), pod(0)]) == "http://127.2.1.5:9400/metrics"
    assert progress.endpoint(job, [pod(0, ip="fd00::5")]) == "http://[fd00::5]:9400/metrics"
    assert progress.endpoint(job, [pod(0, phase="Pending")]) is None
    assert progress.endpoint(job, [pod(0, ip=None)]) is None
    assert progress.endpoint(job, [pod(1)]) is None
