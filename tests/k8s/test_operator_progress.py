"""status.progress through the REAL API server, with the SIMULATED kubelet: one job's rank 0
that streams without end stalls no other job.

Rank 0's metrics endpoint is served by the test on the pod's (loopback) IP, as the pod
would: the trainer's own exporter for a job that trains, an HTTP server that answers a
chunk at a time and never finishes for a job that hangs. The operator runs with one
reconcile worker, so that a reconcile waiting on the network would stall every job.
"""

from __future__ import annotations

from collections.abc import Callable

from helpers.http_server import endless, serve
from sim.node_agent import NodeAgent, wait_for

from k8s.operator_harness import Jobs, OperatorProcess, free_port, job_manifest
from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.train.config import parse_config


def test_a_rank_0_that_never_finishes_answering_stalls_no_other_job(
    node_agent: NodeAgent, start_operator: Callable[..., OperatorProcess], jobs: Jobs
) -> None:
    start_operator("--workers", "1")
    node_agent.add_node(npus=8)
    ports = {"stuck": free_port(), "live": free_port()}
    for name, port in ports.items():
        training = {"epochs": 3, "batchSize": 16}
        jobs.create(job_manifest(name, count=2, training=training, metrics={"port": port}))
    for name in ports:
        jobs.wait_phase(name, "Running")
    stuck_ip = jobs.pods("stuck")[0].status.pod_ip
    live_ip = jobs.pods("live")[0].status.pod_ip
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=2, rank=0)
    exporter = MetricsExporter(cfg, {"JOB_NAME": "live"})
    with serve(endless, stuck_ip, ports["stuck"]) as stuck:
        wait_for(lambda: stuck.connections >= 1, timeout=30, what="the operator scraping stuck")
        exporter.start(ports["live"], addr=live_ip)
        try:
            exporter.on_start({"folder": None, "device": "cpu", "epochs": 3, "steps_per_epoch": 5})
            # live's status keeps up with each epoch while stuck's rank 0 keeps streaming.
            for epoch in range(2):
                record = {"loss": 1.0, "images_per_sec": 100.0 + epoch, "val_top5": 50.0}
                exporter.on_epoch({**record, "epoch": epoch, "val_top1": 10.0 * epoch})
                expected = {"epoch": epoch + 1.0, "imagesPerSecond": 100.0 + epoch}
                wait_for(
                    lambda e=expected: (
                        (jobs.status("live").get("progress") or {}).items() >= e.items()
                    ),
                    timeout=30,
                    what=f"live's progress {expected}",
                )
        finally:
            exporter.close()
        # stuck is reconciled all along: it finishes while its endpoint still streams.
        assert "progress" not in jobs.status("stuck")
        for pod in jobs.pods("stuck"):
            node_agent.finish(pod, exit_code=0)
        assert jobs.wait_phase("stuck", "Succeeded", timeout=30)["progress"] == {"epoch": 3.0}
    for pod in jobs.pods("live"):
        node_agent.finish(pod, exit_code=0)
    # A job that succeeded shows where it ended, spec.training.epochs; the rest as scraped.
    assert jobs.wait_phase("live", "Succeeded")["progress"] == {
        "epoch": 3.0,
        "imagesPerSecond": 101.0,
        "top1": 10.0,
    }
