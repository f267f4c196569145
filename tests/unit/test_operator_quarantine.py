"""Quarantine: which nodes a whole-job restart blames, the decay, the placement that keeps
off them, and the force-deletion of pods stuck Terminating on a NotReady node."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers.jobs import job_manifest

from shufflenet_contract import job as jobs
from shufflenet_operator import policy, render
from shufflenet_operator import quarantine as q
from shufflenet_operator import status as st
from shufflenet_operator.observed import Observed

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
NPU = "huawei.com/Ascend910"
RULES = q.Rules(base=300, cap=1200, forgive=600)


def node(name: str, *, ready: str = "True", healthy: int = 8, total: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "capacity": {NPU: str(total)},
            "allocatable": {NPU: str(healthy)},
        },
    }


def blame(*failed: q.Failed, quarantine: Any = (), history: Any = (), now: datetime = T0):
    return q.blame(failed, quarantine, history, resource=NPU, now=now, rules=RULES)


@pytest.mark.parametrize("code", [1, 2, 3])
def test_an_application_exit_never_blames_the_node_even_a_sick_one(code: int) -> None:
    sick = node("n1", ready="False", healthy=7)
    history = [{"node": "n1", "time": st.format_time(T0)}]
    blamed, after = blame(q.Failed("n1", code, "Error", sick), history=history)
    assert blamed == []
    assert after == history  # not counted towards a second failure either


def test_a_notready_node_is_blamed_for_base_seconds() -> None:
    blamed, _ = blame(q.Failed("n1", None, "PodDeleted", node("n1", ready="Unknown")))
    assert blamed == [
        {"node": "n1", "reason": q.NODE_NOT_READY, "until": "2026-01-01T00:05:00Z", "strikes": 1}
    ]


def test_an_unhealthy_chip_blames_its_node_and_says_which_resource() -> None:
    blamed, _ = blame(q.Failed("n1", 137, "RetryableExit", node("n1", healthy=7)))
    assert [(e["node"], e["reason"], e["chip"]) for e in blamed] == [
        ("n1", q.DEVICE_UNHEALTHY, f"1 {NPU} Unhealthy")
    ]


def test_a_rank_that_only_lost_its_peer_blames_nothing() -> None:
    blamed, history = blame(q.Failed("n1", 134, "RetryableExit", node("n1", healthy=7)))
    assert blamed == [] and history == []


def test_the_same_node_failing_twice_is_blamed_the_second_time() -> None:
    first = q.Failed("n1", 137, "RetryableExit", node("n1"))
    blamed, history = blame(first)
    assert blamed == [] and [h["node"] for h in history] == ["n1"]
    blamed, _ = blame(first, history=history, now=T0 + timedelta(seconds=30))
    assert [(e["node"], e["reason"]) for e in blamed] == [("n1", q.REPEATED_FAILURE)]
    # Once forgiven, a failure is a first one again.
    blamed, _ = blame(first, history=history, now=T0 + timedelta(seconds=601))
    assert blamed == []


def test_blame_doubles_up_to_the_cap_and_is_forgiven_after_a_quiet_period() -> None:
    sick = q.Failed("n1", None, "NodeLost", node("n1", ready="False"))
    entries: list[dict[str, Any]] = []
    now = T0
    for strikes, seconds in [(1, 300), (2, 600), (3, 1200), (4, 1200)]:
        entries, _ = blame(sick, quarantine=entries, now=now)
        assert entries[0]["strikes"] == strikes
        assert st.parse_time(entries[0]["until"]) == now + timedelta(seconds=seconds)
        now += timedelta(seconds=seconds)  # blamed again the moment it is let back
    assert q.active(entries, now - timedelta(seconds=1)) == ["n1"]
    assert q.active(entries, now) == []
    # Quiet for `forgive` seconds after its quarantine: dropped, and the next blame is a
    # first one.
    entries, _ = blame(quarantine=entries, now=now + timedelta(seconds=600))
    assert entries == []


def test_quarantine_off_blames_nothing_and_forgets_everything() -> None:
    off = q.Rules(base=0)
    old = [{"node": "n1", "reason": q.NODE_NOT_READY, "until": "2026-01-01T01:00:00Z"}]
    sick = q.Failed("n1", None, "NodeLost", node("n1", ready="False"))
    assert q.blame([sick], old, [], resource=NPU, now=T0, rules=off) == ([], [])


def test_the_list_is_bounded() -> None:
    failed = [q.Failed(f"n{i}", None, "X", node(f"n{i}", ready="False")) for i in range(40)]
    blamed, _ = blame(*failed)
    assert len(blamed) == q.MAX_ENTRIES


def test_avoid_nodes_is_added_to_every_term_of_the_jobs_own_affinity() -> None:
    own = {"key": "zone", "operator": "In", "values": ["a"]}
    pod = {
        "spec": {
            "nodeSelector": {"accelerator": "huawei-Ascend910"},
            "affinity": {
                "podAntiAffinity": {"x": 1},
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [own]}, {"matchFields": []}]
                    },
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}],
                },
            },
        }
    }
    out = q.avoid_nodes(pod, ["n1", "n2"])
    keep_off = {"key": q.HOSTNAME_LABEL, "operator": "NotIn", "values": ["n1", "n2"]}
    affinity = out["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [own, keep_off]},
        {"matchFields": [], "matchExpressions": [keep_off]},
    ]
    assert affinity["podAntiAffinity"] == {"x": 1}
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert out["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910"}
    # The pod given is left as it was.
    assert pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0] == {"matchExpressions": [own]}
    assert q.avoid_nodes({"spec": {}}, ["n1", "n2"])["spec"]["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [keep_off]}]
        }
    }
    assert "affinity" not in q.avoid_nodes({"spec": {}}, [])["spec"]


def _pod(name: str, node_name: str, deleting: datetime | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if deleting is not None:
        meta["deletionTimestamp"] = st.format_time(deleting)
    return {"metadata": meta, "spec": {"nodeName": node_name}}


def test_only_pods_terminating_on_a_notready_node_past_the_timeout_are_force_deleted() -> None:
    nodes = {"bad": node("bad", ready="Unknown"), "good": node("good")}
    pods = [
        _pod("a", "bad", T0 - timedelta(seconds=61)),
        _pod("b", "bad", T0 - timedelta(seconds=20)),
        _pod("c", "good", T0 - timedelta(seconds=600)),
        _pod("d", "bad"),
        _pod("e", "unread", T0 - timedelta(seconds=600)),
    ]
    due, left = q.stuck_terminating(pods, nodes, now=T0, timeout=60)
    assert [p["metadata"]["name"] for p in due] == ["a"]
    assert left == pytest.approx(40)
    # A pod within its grace on a node not read yet: looked at again when the grace ends.
    due, left = q.stuck_terminating(
        [*pods, _pod("f", "unread", T0 + timedelta(seconds=10))], nodes, now=T0, timeout=60
    )
    assert [p["metadata"]["name"] for p in due] == ["a"]
    assert left == pytest.approx(10)
    assert q.stuck_terminating(pods, nodes, now=T0, timeout=-1) == ([], None)


# Through policy.plan: a restart blames, the next attempt keeps off, the status says so.


def _observed(job: dict[str, Any], pods: list[dict[str, Any]], nodes: dict[str, Any]) -> Observed:
    return Observed(job, pods, service={"kind": "Service"}, configmap=None, nodes=nodes)


def _running_job(**status: Any) -> dict[str, Any]:
    job = job_manifest(
        metadata={"namespace": "ns", "uid": "job-uid"},
        devices={"type": "gpu", "count": 2},
        training={"batchSize": 64},
    )
    created = {"type": st.CREATED, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    job["status"] = {"phase": "Running", "restarts": 0, "conditions": [created], **status}
    return job


def _rank_pod(job: dict[str, Any], rank: int, node_name: str, code: int | None) -> dict[str, Any]:
    pod = render.render_pod(
        jobs.validate_job({k: v for k, v in job.items() if k != "status"}), rank, 0
    )
    pod["metadata"]["uid"] = f"uid-{rank}"
    pod["spec"]["nodeName"] = node_name
    pod["status"] = {"phase": "Running"}
    if code is not None:
        pod["status"] = {
            "phase": "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}],
        }
    return pod


def test_a_restart_after_a_notready_node_keeps_the_next_attempt_off_it() -> None:
    job = _running_job()
    pods = [_rank_pod(job, 0, "n0", None), _rank_pod(job, 1, "n1", 137)]
    settings = policy.Settings(quarantine=RULES)
    nodes = {"n1": node("n1", ready="False")}
    plan = policy.plan(_observed(job, pods, nodes), now=T0, settings=settings)
    assert plan.status["restarts"] == 1
    assert [(e["node"], e["reason"]) for e in plan.status["quarantine"]] == [
        ("n1", q.NODE_NOT_READY)
    ]
    # The old pods are gone, the backoff has passed: the new pods keep off n1.
    job["status"] = plan.status
    plan = policy.plan(_observed(job, [], {}), now=T0 + timedelta(seconds=11), settings=settings)
    pods = [m for m in plan.create if m["kind"] == "Pod"]
    assert len(pods) == 2
    for pod in pods:
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms == [
            {"matchExpressions": [{"key": q.HOSTNAME_LABEL, "operator": "NotIn", "values": ["n1"]}]}
        ]
    # Unschedulable on the others: the job says why, naming the quarantined node.
    job["status"] = plan.status
    for pod in pods:
        pod["metadata"]["uid"] = pod["metadata"]["name"]
        pod["metadata"]["creationTimestamp"] = st.format_time(T0)
        pod["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 node(s) didn't match node affinity.",
                }
            ],
        }
    plan = policy.plan(_observed(job, pods, {}), now=T0 + timedelta(seconds=12), settings=settings)
    waiting = plan.status["waiting"]
    assert waiting["reason"] == "Unschedulable"
    assert (
        "keep off quarantined nodes: n1 (NodeNotReady, until 2026-01-01T00:05:00Z)"
        in (waiting["message"])
    )


def test_an_exit_1_fails_the_job_and_blames_nobody() -> None:
    job = _running_job()
    pods = [_rank_pod(job, 0, "n0", None), _rank_pod(job, 1, "n1", 1)]
    nodes = {"n1": node("n1", ready="False")}
    plan = policy.plan(_observed(job, pods, nodes), now=T0, settings=policy.Settings())
    assert plan.status["phase"] == "Failed"
    assert "quarantine" not in plan.status


def test_the_plan_force_deletes_a_pod_stuck_terminating_on_a_notready_node() -> None:
    job = _running_job()
    stuck = _rank_pod(job, 1, "n1", None)
    stuck["metadata"]["deletionTimestamp"] = st.format_time(T0)
    pods = [_rank_pod(job, 0, "n0", None), stuck]
    nodes = {"n1": node("n1", ready="Unknown")}
    settings = policy.Settings(terminating_timeout_seconds=60)
    plan = policy.plan(
        _observed(job, pods, nodes), now=T0 + timedelta(seconds=59), settings=settings
    )
    assert plan.force_delete_pods == []
    assert plan.requeue_after is not None and plan.requeue_after <= 1
    plan = policy.plan(
        _observed(job, pods, nodes), now=T0 + timedelta(seconds=61), settings=settings
    )
    assert plan.force_delete_pods == [(stuck["metadata"]["name"], "uid-1")]
