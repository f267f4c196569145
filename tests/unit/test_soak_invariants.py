"""The cluster soak's invariants (tests/soak/invariants.py) on hand-made cluster states: each
check finds what it is there to find, and the Monitor waits out a check's grace period."""

from __future__ import annotations

import json
from typing import Any

from soak import invariants as inv

from shufflenet_contract import ranktable
from shufflenet_operator import render


def pod(job: str, rank: int, attempt: int = 0, phase: str = "Running", **meta: Any) -> dict:
    labels = {
        render.JOB_LABEL: job,
        render.RANK_LABEL: str(rank),
        render.RESTART_LABEL: str(attempt),
    }
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-rank-{rank}",
            "uid": f"{job}-{attempt}-{rank}",
            "labels": labels,
            **meta,
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": phase},
    }


def job(name: str, phase: str, restarts: int = 0, **extra: Any) -> dict:
    spec = {
        "devices": {"type": "npu", "count": 2},
        "runPolicy": {"backoffLimit": 2, "cleanPodPolicy": "Running"},
    }
    status = {"phase": phase, "restarts": restarts, **extra}
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": spec, "status": status}


def test_two_live_pods_of_a_rank_are_found_a_terminating_one_is_not() -> None:
    old = pod("a", 0)
    new = pod("a", 0, attempt=1)
    assert [f.check for f in inv.one_live_pod_per_rank([old, new])] == ["one_live_pod_per_rank"]
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert inv.one_live_pod_per_rank([old, new]) == []
    assert inv.one_live_pod_per_rank([pod("a", 0, phase="Failed"), new]) == []


def test_two_live_processes_of_a_rank_are_found() -> None:
    procs = [inv.RankProcess("a", 1, 0, "u0", 10), inv.RankProcess("a", 1, 1, "u1", 11)]
    (found,) = inv.one_live_process_per_rank(procs)
    assert found.job == "a" and "attempts [0, 1]" in found.detail
    assert inv.one_live_process_per_rank(procs[:1]) == []


def test_pods_of_a_suspended_or_finished_job() -> None:
    suspended = job("s", "Suspended")
    procs = [inv.RankProcess("s", 0, 0, "u", 1)]
    found = inv.no_pods_while_suspended([suspended], [pod("s", 0)], procs)
    assert len(found) == 2
    failed = job("f", "Failed")
    assert inv.cleanup_after_finish([failed], [pod("f", 0, phase="Failed")]) == []
    assert len(inv.cleanup_after_finish([failed], [pod("f", 1)])) == 1
    failed["spec"]["runPolicy"]["cleanPodPolicy"] = "All"
    assert len(inv.cleanup_after_finish([failed], [pod("f", 0, phase="Failed")])) == 1


def test_children_of_a_deleted_job_are_orphans() -> None:
    child = pod("d", 0, ownerReferences=[{"uid": "uid-d"}])
    (found,) = inv.no_orphans_after_delete({"uid-d": "d"}, [child])
    assert found.job == "d" and "Pod d-rank-0" in found.detail
    assert inv.no_orphans_after_delete({"uid-x": "x"}, [child]) == []


def test_restarts_over_the_limit_and_a_changed_outcome() -> None:
    assert len(inv.restarts_within_backoff_limit([job("r", "Running", restarts=3)])) == 1
    assert inv.restarts_within_backoff_limit([job("r", "Running", restarts=2)]) == []
    conds = [
        {"type": "Succeeded", "status": "True", "reason": "AllRanksSucceeded"},
        {"type": "Failed", "status": "True", "reason": "InvalidSpec"},
    ]
    both = job("t", "Failed", conditions=conds)
    found = inv.terminal_phase_is_final([both], {"t": "Succeeded"})
    assert [f.detail.split(" ")[0] for f in found] == ["phase", "both"]


def test_restart_events_must_name_the_rank() -> None:
    j = job("e", "Running", restarts=2)
    events = [
        {
            "type": "Warning",
            "message": "rank 1 pod e-rank-1 exited 137: restarting all 2 ranks "
            "from the last checkpoint (restart 1 of 2, in 0.5s)",
        },
        {"type": "Warning", "message": "something: (restart 2 of 2, in 1s)"},
    ]
    (found,) = inv.restart_reasons_name_the_rank(j, events)
    assert found.detail.startswith("restart 2: no rank named")
    (missing,) = inv.restart_reasons_name_the_rank(j, events[:1])
    assert missing.detail == "restart 2: no Event"


def test_a_stalled_job_unless_a_condition_says_why() -> None:
    pending = job("p", "Pending", conditions=[])
    assert inv.not_stalled(pending, 200, 120, 300) != []
    assert inv.not_stalled(pending, 100, 120, 300) == []
    waiting = job(
        "p",
        "Pending",
        conditions=[{"type": "Scheduled", "status": "False", "reason": "WaitingForScheduler"}],
    )
    assert inv.not_stalled(waiting, 200, 120, 300) == []
    # What the scheduler or the kubelet posted on its pods (status.waiting) says why too.
    unschedulable = {"type": "Scheduled", "status": "False", "reason": "Unschedulable"}
    told = job(
        "p",
        "Pending",
        conditions=[unschedulable],
        waiting={"reason": "Unschedulable", "message": "rank 0 pod p-rank-0: 0/1 nodes"},
    )
    assert inv.not_stalled(told, 200, 120, 300) == []
    assert inv.ended_with_reason(job("x", "Failed", conditions=[])) != []


def test_a_rank_table_listing_pods_of_another_attempt() -> None:
    def annotated(r: int) -> ranktable.AnnotatedPod:
        chip = {"device_id": str(r), "device_ip": f"127.100.1.{101 + r}"}
        ann = {"pod_name": f"p{r}", "host_ip": "127.0.1.1", "devices": [chip]}
        return ranktable.AnnotatedPod(r, f"uid-{r}", f"p{r}", json.dumps(ann))

    pods = [annotated(r) for r in range(2)]
    table = ranktable.build_rank_table(ranktable.pods_from_annotations(pods, 1))
    assert inv.table_of_own_attempt("j", 1, table, 2, {"uid-0", "uid-1"}, "cm") == []
    (found,) = inv.table_of_own_attempt("j", 1, table, 2, {"uid-0"}, "cm")
    assert "not of it: ['uid-1']" in found.detail
    (short,) = inv.table_of_own_attempt("j", 1, table, 3, {"uid-0", "uid-1"}, "cm")
    assert "not a complete table of 3 ranks" in short.detail


def test_status_counts_and_metrics() -> None:
    j = job(
        "c",
        "Running",
        ranks={"total": 2, "scheduled": 2, "running": 2, "succeeded": 0, "failed": 0},
    )
    assert inv.status_counts_match_pods(j, [pod("c", 0), pod("c", 1)], 1) == []
    assert len(inv.status_counts_match_pods(j, [pod("c", 0), pod("c", 1, phase="Failed")], 1)) == 1
    samples = {
        ("shufflenet_operator_jobs", "ns", "Running"): 1.0,
        ("shufflenet_operator_jobs", "ns", "Failed"): 1.0,
        ("shufflenet_operator_job_restarts_total", "c", "ns"): 1.0,
    }
    found = inv.metrics_match_statuses("ns", [j], samples)
    assert sorted(f.detail.split(" ")[0] for f in found) == ["gauge", "restarts"]


def test_the_monitor_reports_a_finding_only_after_its_grace_period_and_once() -> None:
    m = inv.Monitor()
    f = inv.Finding("status_counts_match_pods", "j", "off")
    assert m.observe([f], 0.0, {f.check}) == []
    assert m.observe([f], 10.0, {f.check}) == []
    assert m.observe([], 11.0, {f.check}) == []  # cleared: the clock starts again
    assert m.observe([f], 12.0, {f.check}) == []
    (v,) = m.observe([f], 12.0 + inv.GRACE_S[f.check], {f.check})
    assert v.time == 12.0 and v.check == f.check
    assert m.observe([f], 100.0, {f.check}) == []
    now = inv.Finding("one_live_pod_per_rank", "j", "2 live")
    assert len(m.observe([now], 100.0, {now.check})) == 1  # no grace


def test_time_without_an_api_server_does_not_count_towards_the_grace() -> None:
    m = inv.Monitor()
    f = inv.Finding("status_counts_match_pods", "j", "off")
    m.observe([f], 0.0, {f.check})
    m.unavailable(20.0)
    assert m.observe([f], inv.GRACE_S[f.check] + 1, {f.check}) == []
    assert len(m.observe([f], inv.GRACE_S[f.check] + 21, {f.check})) == 1
