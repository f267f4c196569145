"""Operator: status.recoveries and status.goodput (recoveries.py), through policy.plan on the
in-memory cluster, and from the trainer's own metrics page."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from prometheus_client import generate_latest
from test_operator_policy import T0, Cluster, started

from shufflenet_operator import progress, recoveries
from shufflenet_operator import status as st
from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.loop import StepEvent


def unix(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


def page(started_at: float, train: float, step: int, **more: Any) -> dict[str, Any]:
    """What progress.parse makes of rank 0's page (seconds after T0)."""
    return {
        "epoch": 1.0,
        "processStart": unix(started_at),
        "trainSeconds": train,
        "globalStep": step,
        **more,
    }


def fail(c: Cluster, rank: int, code: int, seconds_ago: float) -> None:
    c.finish(rank, code)
    finished = st.format_time(c.now - timedelta(seconds=seconds_ago))
    c.pods[f"sn-rank-{rank}"]["status"]["containerStatuses"][0]["state"]["terminated"][
        "finishedAt"
    ] = finished


def test_a_whole_job_restart_records_each_phase_from_the_failure() -> None:
    c = started()  # pods created at T0
    c.reconcile(10, progress=page(2, 6.0, 40, resumedStep=0, firstStepAt=unix(3)))
    assert c.status["progress"] == {"epoch": 1.0}  # the rest is not progress
    assert c.status["trainingSeconds"] == 6.0 and c.status["goodput"] == 0.6
    c.reconcile(10, progress=page(2, 15.0, 100))
    assert c.status["trainingSeconds"] == 15.0 and c.status["goodput"] == 0.75
    fail(c, 1, 137, seconds_ago=2)  # at T0+18, seen at T0+20
    c.reconcile()
    assert c.status["recoveries"] == [
        {
            "tier": 3,
            "cause": "RetryableExit: rank 1 pod sn-rank-1 exited 137",
            "at": st.format_time(T0 + timedelta(seconds=18)),
            "attempt": 1,
            "detectSeconds": 2.0,
        }
    ]
    c.reconcile(10)  # the backoff
    c.schedule()
    c.run_all()
    c.reconcile(5)  # every rank runs at T0+35
    assert c.status["recoveries"][-1]["podsReadySeconds"] == 17.0
    # The new rank 0 loaded the checkpoint of step 80 at T0+38, stepped at T0+40.
    c.reconcile(10, progress=page(38, 1.0, 81, resumedStep=80, firstStepAt=unix(40)))
    entry = c.status["recoveries"][-1]
    assert entry["checkpointLoadedSeconds"] == 20.0 and entry["firstStepSeconds"] == 22.0
    assert entry["stepsLost"] == 20  # step 100 was scraped, step 80 resumed
    assert c.status["trainingSeconds"] == 16.0 and c.status["goodput"] == round(16 / 45, 4)
    assert recoveries.first_steps({}, c.status) == [(3, 22.0)]
    assert recoveries.first_steps(c.status, c.status) == []


def test_a_restart_in_place_on_rank_0s_page_is_recorded_once() -> None:
    c = started()
    c.reconcile(10, progress=page(1, 5.0, 30, resumedStep=0))
    recovery = {
        "generation": 1,
        "cause": "rank 1: exit 137 (SIGKILL)",
        "failedAt": unix(12),
        "rendezvousSeconds": 2.5,
        "checkpointLoadedSeconds": 4.0,
        "firstStepSeconds": 5.25,
    }
    after = page(15, 2.0, 22, resumedStep=20, firstStepAt=unix(17.25), recovery=recovery)
    c.reconcile(10, progress=after)
    c.reconcile(10, progress={**after, "trainSeconds": 9.0})
    assert c.status["recoveries"] == [
        {
            "tier": 1,
            "cause": "rank 1: exit 137 (SIGKILL)",
            "at": st.format_time(T0 + timedelta(seconds=12)),
            "attempt": 0,
            "generation": 1,
            "rendezvousSeconds": 2.5,
            "checkpointLoadedSeconds": 4.0,
            "firstStepSeconds": 5.25,
            "stepsLost": 10,
        }
    ]
    # 5 s of the first process, 9 of the second.
    assert c.status["trainingSeconds"] == 14.0 and c.status["goodput"] == round(14 / 30, 4)


def test_history_is_bounded_and_goodput_ends_with_the_job() -> None:
    c = started()
    for n in range(12):
        recoveries.job_restarted(c.status, f"cause {n}", None, T0)
    assert len(c.status["recoveries"]) == recoveries.HISTORY
    assert c.status["recoveries"][0]["cause"] == "cause 2"
    assert "detectSeconds" not in c.status["recoveries"][0]  # a pod gone: no finish time
    c.job["status"].pop("recoveries")
    c.reconcile(50, progress=page(1, 25.0, 10))
    for r in range(4):
        c.finish(r, 0)
    c.reconcile(50)
    assert c.status["phase"] == "Succeeded" and c.status["goodput"] == 0.25
    c.reconcile(500)  # over the run, not growing with the looks after it
    assert c.status["goodput"] == 0.25
    assert recoveries.goodput(10.0, None, T0) is None
    assert recoveries.goodput(10.0, T0, T0 + timedelta(seconds=5)) == 1.0


def test_no_goodput_without_a_scrape() -> None:
    c = started()
    fail(c, 0, 137, seconds_ago=1)
    c.reconcile(3)
    assert "goodput" not in c.status and c.status["recoveries"][0]["tier"] == 3


def exporter_page(env: dict[str, str], steps: int = 2) -> str:
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=2, rank=0)
    exporter = MetricsExporter(cfg, {"JOB_NAME": "sn", **env}, process=False)
    plan = {"folder": None, "device": "cpu", "epochs": 4, "steps_per_epoch": 10}
    exporter.on_start({**plan, "start_epoch": 1, "global_step": 12})
    for n in range(steps):
        exporter.on_step(StepEvent(1, 2 + n, 13 + n, 16, 0.25, 0.0, 0.1))
    return generate_latest(exporter.registry).decode()


def test_the_trainers_page_gives_training_seconds_steps_and_an_in_place_recovery() -> None:
    failed = T0.timestamp() - 3
    recovery = {
        "generation": 2,
        "cause": "rank 1: exit 137 (SIGKILL)",
        "failed_at": failed,
        "rendezvous_at": failed + 1,
    }
    found = progress.parse(exporter_page({"SHUFFLENET_RECOVERY": json.dumps(recovery)}))
    assert found["trainSeconds"] == 0.5 and found["globalStep"] == 14
    assert found["resumedStep"] == 12 and found["firstStepAt"] >= found["processStart"]
    seen = found["recovery"]
    assert (seen["generation"], seen["cause"]) == (2, "rank 1: exit 137 (SIGKILL)")
    assert seen["failedAt"] == round(failed, 3)
    assert seen["rendezvousSeconds"] == 1.0
    assert seen["firstStepSeconds"] >= seen["checkpointLoadedSeconds"] > 1.0
    assert "recovery" not in progress.parse(exporter_page({}))
