"""`snjob status`: the job's state as a person reads it (describe is pure)."""

from __future__ import annotations

import copy
from typing import Any

from shufflenet_trainer.jobs.status import describe

JOB: dict[str, Any] = {
    "metadata": {"name": "sn", "namespace": "team"},
    "spec": {
        "devices": {"type": "npu", "count": 8},
        "training": {"epochs": 240},
        "runPolicy": {"backoffLimit": 3},
    },
    "status": {
        "phase": "Running",
        "restarts": 1,
        "ranks": {"total": 8, "scheduled": 8, "running": 8, "succeeded": 0, "failed": 0},
        "rankTable": {"status": "completed", "version": 4},
        "progress": {"epoch": 12.4, "imagesPerSecond": 2213.5, "top1": 31.25},
        "startTime": "2026-11-28T01:00:00Z",
        "conditions": [
            {"type": "Running", "status": "True", "reason": "AllRanksRunning", "message": "8"},
            {"type": "Restarting", "status": "False", "reason": "Restarted", "message": "ok"},
        ],
    },
}


def test_a_running_job_reads_in_a_few_lines() -> None:
    events = [
        {"lastTimestamp": f"2026-11-28T01:{m:02d}:00Z", "type": "Normal", "reason": f"R{m}"}
        for m in range(12, 0, -1)
    ]
    text = describe(JOB, events)
    lines = text.splitlines()
    assert lines[0] == "job team/sn: Running (8 x npu, restarts 1 of 3)"
    assert "ranks:    8 total, 8 scheduled, 8 running, 0 succeeded, 0 failed" in lines
    assert "progress: epoch 12.40 of 240, 2213.5 images/s, val top-1 31.25%" in lines
    assert "rank table: completed (version 4)" in lines
    assert any(line.split() == ["Running", "True", "AllRanksRunning:", "8"] for line in lines)
    # The latest ten Events, oldest first.
    shown = [line.split()[2].rstrip(":") for line in lines if line.startswith("  2026")]
    assert shown == [f"R{m}" for m in range(3, 13)]


def test_a_job_the_operator_has_not_seen() -> None:
    job = {"metadata": {"name": "new", "namespace": "ns"}, "spec": {"devices": {"type": "cpu"}}}
    assert describe(job).splitlines() == [
        "job ns/new: not seen yet (? x cpu, restarts 0 of ?)",
        "progress: none yet",
    ]


def test_a_waiting_job_says_why_on_its_own_line() -> None:
    reason = "ImagePullBackOff"
    message = 'rank 0 pod sn-rank-0 container trainer: Back-off pulling image "r/t:1"'
    job = {**JOB, "status": {"phase": "Pending", "waiting": {"reason": reason, "message": message}}}
    lines = describe(job).splitlines()
    assert lines[1] == f"waiting:  {reason}: {message}"
    assert not any(line.startswith("waiting:") for line in describe(JOB).splitlines())


def test_quarantined_nodes_show_with_reason_chip_and_until() -> None:
    quarantine = [
        {"node": "n1", "reason": "DeviceUnhealthy", "until": "2026-01-01T00:05:00Z", "chip": "1 x"},
        {"node": "n2", "reason": "NodeNotReady", "until": "2026-01-01T00:10:00Z"},
    ]
    lines = describe({**JOB, "status": {"phase": "Running", "quarantine": quarantine}})
    assert "quarantined: n1 (DeviceUnhealthy, 1 x) until 2026-01-01T00:05:00Z" in lines
    assert "quarantined: n2 (NodeNotReady) until 2026-01-01T00:10:00Z" in lines
    assert "quarantined" not in describe(JOB)


def test_goodput_and_the_last_recovery_have_a_line_each() -> None:
    job = copy.deepcopy(JOB)
    job["status"]["goodput"] = 0.8125
    job["status"]["trainingSeconds"] = 2925.4
    job["status"]["recoveries"] = [
        {"tier": 1, "cause": "rank 1: exit 137 (SIGKILL)", "at": "2026-11-28T01:10:00Z"},
        {
            "tier": 3,
            "cause": "RetryableExit: rank 2 pod sn-rank-2 exited 137",
            "at": "2026-11-28T01:30:00Z",
            "detectSeconds": 1.0,
            "podsReadySeconds": 12.5,
            "firstStepSeconds": 20.0,
            "stepsLost": 40,
        },
    ]
    lines = describe(job).splitlines()
    assert "goodput:  81.2% (2925s training)" in lines
    assert (
        "recovery (last of 2): tier 3 at 2026-11-28T01:30:00Z (RetryableExit: rank 2 pod "
        "sn-rank-2 exited 137): detected 1s, pods ready 12.5s, first step 20s; 40 steps lost"
    ) in lines
    assert not any(line.startswith(("goodput", "recovery")) for line in describe(JOB).splitlines())
