"""status.progress through the REAL API server, with the SIMULATED kubelet: one job's rank 0
that streams without end stalls no other job; a whole-job restart shows in status.recoveries
with its phases, and the training seconds scraped give status.goodput.

Rank 0's metrics endpoint is served by the test on the pod's (loopback) IP, as the pod
would: the trainer's own exporter for a job that trains, an HTTP server that answers a
chunk at a time and never finishes for a job that hangs. The operator runs with one
reconcile worker, so that a reconcile waiting on the network would stall every job.
"""

from __future__ import annotations

from collections.abc import Callable

from helpers.http_server import endless, serve
from sim.node_agent import NodeAgent, wait_for

from k8s.operator_harness import Jobs, OperatorProcess, free_port, job_manifest, serve_rank_0
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


def test_a_whole_job_restart_is_recorded_with_its_phases_and_goodput(
    node_agent: NodeAgent, start_operator: Callable[..., OperatorProcess], jobs: Jobs
) -> None:
    operator = start_operator()
    node_agent.add_node(npus=8)
    port = free_port()
    jobs.create(
        job_manifest(
            "tier3", count=2, training={"epochs": 3, "batchSize": 16}, metrics={"port": port}
        )
    )
    jobs.wait_phase("tier3", "Running")
    first = serve_rank_0(jobs, "tier3", port, resumed=0, steps=30)
    try:
        wait_for(
            lambda: jobs.status("tier3").get("trainingSeconds") == 15.0,
            timeout=30,
            what="15 s of training scraped",
        )
    finally:
        first.close()
    node_agent.finish(jobs.pods("tier3")[1], exit_code=137)
    wait_for(lambda: jobs.status("tier3").get("restarts") == 1, what="the whole-job restart")
    jobs.wait_phase("tier3", "Running")
    second = serve_rank_0(jobs, "tier3", port, resumed=20, steps=1)  # checkpoint of step 20
    try:
        wait_for(
            lambda: "firstStepSeconds" in (jobs.status("tier3").get("recoveries") or [{}])[-1],
            timeout=30,
            what="the first step after the restart",
        )
    finally:
        second.close()
    status = jobs.status("tier3")
    [entry] = status["recoveries"]
    assert entry["tier"] == 3 and entry["attempt"] == 1
    assert entry["cause"] == "RetryableExit: rank 1 pod tier3-rank-1 exited 137"
    # Seconds from the failure (the kubelet's finishedAt, whole seconds), in order.
    assert 0 <= entry["detectSeconds"] <= entry["podsReadySeconds"] < 30
    assert entry["podsReadySeconds"] <= entry["checkpointLoadedSeconds"] + 1
    assert entry["checkpointLoadedSeconds"] <= entry["firstStepSeconds"] < 60
    assert entry["stepsLost"] == 10  # step 30 was scraped, step 20 resumed
    assert status["trainingSeconds"] == 15.5
    assert 0 < status["goodput"] <= 1
    metrics = operator.metrics()
    labels = f'job="tier3",namespace="{jobs.namespace}"'
    assert f'shufflenet_operator_recovery_seconds_count{{{labels},tier="3"}} 1.0' in metrics
    [goodput] = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith(f"shufflenet_operator_job_goodput{{{labels}}}")
    ]
    assert 0 < goodput <= 1
