"""Operator: reconcile decisions (policy.plan) and status helpers, on an in-memory cluster."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers.jobs import job_manifest

from shufflenet_contract import ranktable
from shufflenet_operator import policy, render
from shufflenet_operator import status as st
from shufflenet_operator.observed import Observed

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = policy.Settings(restart_backoff_seconds=10, max_backoff_seconds=60)


class Cluster:
    """Just enough of an API server to apply plans: children by name, a status."""

    def __init__(self, **spec: Any) -> None:
        small = {"devices": {"type": "npu", "count": 4}, "training": {"batchSize": 64}}
        self.job = job_manifest(metadata={"namespace": "ns", "uid": "job-uid"}, **{**small, **spec})
        self.pods: dict[str, dict[str, Any]] = {}
        self.service: dict[str, Any] | None = None
        self.configmap: dict[str, Any] | None = None
        self.podgroup: dict[str, Any] | None = None
        self.now = T0
        self.events: list[st.Event] = []
        self.uids = 0
        self.deleted_job = False
        # As the API server deletes pods: marked (deletionTimestamp) until their containers
        # stop, which `terminated()` plays; False removes them at once.
        self.graceful = False
        self.settings = SETTINGS
        # (kind, name) of objects holding a child's name that the job does not own.
        self.foreign: tuple[tuple[str, str], ...] = ()

    def reconcile(self, seconds: float = 0, progress: dict[str, Any] | None = None) -> policy.Plan:
        self.now += timedelta(seconds=seconds)
        observed = Observed(
            copy.deepcopy(self.job),
            [copy.deepcopy(p) for p in self.pods.values()],
            service=self.service,
            configmap=self.configmap,
            has_podgroup=self.podgroup is not None,
            foreign_children=self.foreign,
        )
        plan = policy.plan(observed, now=self.now, settings=self.settings, progress=progress)
        for m in plan.create:
            m = copy.deepcopy(m)
            self.uids += 1
            m["metadata"]["uid"] = f"uid-{self.uids}"
            if m["kind"] == "Pod":
                assert m["metadata"]["name"] not in self.pods, "duplicate pod"
                self.pods[m["metadata"]["name"]] = m
            elif m["kind"] == "Service":
                self.service = m
            elif m["kind"] == "PodGroup":
                assert not self.pods, "the PodGroup must exist before the pods"
                self.podgroup = m
            else:
                self.configmap = m
        if plan.configmap_data is not None:
            assert self.configmap is not None
            self.configmap["data"] = plan.configmap_data
        for name, uid in plan.delete_pods:
            assert self.pods[name]["metadata"]["uid"] == uid
            if self.graceful:
                self.pods[name]["metadata"]["deletionTimestamp"] = st.format_time(self.now)
            else:
                del self.pods[name]
        self.job["status"] = copy.deepcopy(plan.status)
        self.events += plan.events
        self.deleted_job |= plan.delete_job
        return plan

    @property
    def status(self) -> dict[str, Any]:
        return self.job["status"]

    def cond(self, type_: str) -> dict[str, Any]:
        c = st.get_condition(self.status["conditions"], type_)
        assert c is not None, type_
        return dict(c)

    def schedule(self, annotate: bool = True) -> None:
        for i, pod in enumerate(sorted(self.pods.values(), key=st.pod_rank)):  # type: ignore[arg-type]
            node = i // 2
            pod["spec"]["nodeName"] = f"node-{node}"
            if annotate:
                ann = {
                    "pod_name": pod["metadata"]["name"],
                    "server_id": f"127.0.1.{node + 1}",
                    "host_ip": f"127.0.1.{node + 1}",
                    "devices": [
                        {"device_id": str(i % 2), "device_ip": f"127.100.{node}.{101 + i % 2}"}
                    ],
                }
                pod["metadata"].setdefault("annotations", {})[ranktable.ANNOTATION] = json.dumps(
                    ann
                )

    def run_all(self) -> None:
        for pod in self.pods.values():
            pod["status"] = {"phase": "Running"}

    def finish(self, rank: int, code: int) -> None:
        pod = self.pods[f"sn-rank-{rank}"]
        pod["status"] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}],
        }

    def terminated(self) -> None:
        """The pods being deleted are gone."""
        self.pods = {k: p for k, p in self.pods.items() if not st.is_deleting(p)}

    def table(self) -> dict[str, Any]:
        assert self.configmap is not None
        return ranktable.parse(self.configmap["data"]["hccl.json"])


def started(**spec: Any) -> Cluster:
    c = Cluster(**spec)
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    return c


def test_first_reconcile_creates_every_child_once() -> None:
    c = Cluster()
    plan = c.reconcile()
    kinds = sorted(m["kind"] for m in plan.create)
    assert kinds == ["ConfigMap", "Pod", "Pod", "Pod", "Pod", "PodGroup", "Service"]
    assert c.status["phase"] == "Creating"
    assert c.cond("Created")["status"] == "True"
    assert c.status["startTime"] == "2026-01-01T12:00:00Z"
    assert c.table() == {"status": "initializing"}
    again = c.reconcile(1)
    assert again.create == [] and again.delete_pods == []
    assert c.status["phase"] == "Pending"
    assert c.status["ranks"] == {
        "total": 4,
        "scheduled": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
    }


def test_rank_table_completed_only_when_every_pod_is_annotated() -> None:
    c = Cluster()
    c.reconcile()
    c.schedule(annotate=False)
    c.reconcile()
    assert c.table() == {"status": "initializing"}
    assert c.cond("Scheduled")["status"] == "True"
    assert c.cond("RankTableReady")["status"] == "False"
    c.schedule()
    del c.pods["sn-rank-2"]["metadata"]["annotations"]
    c.reconcile()
    assert c.table()["status"] == "initializing"
    c.schedule()
    plan = c.reconcile()
    assert plan.ranktable_completed
    table = c.table()
    ranktable.validate_rank_table(table, 0, 4)
    # One entry per pod, keyed by the pod's UID, in rank order.
    uids = [c.pods[f"sn-rank-{r}"]["metadata"]["uid"] for r in range(4)]
    assert [s["server_id"] for s in table["server_list"]] == uids
    assert [s["device"][0]["rank_id"] for s in table["server_list"]] == ["0", "1", "2", "3"]
    assert table["server_list"][3]["device"][0] == {
        "device_id": "1",
        "device_ip": "127.100.1.102",
        "rank_id": "3",
    }
    assert c.configmap is not None and c.configmap["data"]["version"] == "2"
    assert c.configmap["data"]["attempt"] == "0"
    assert c.status["rankTable"] == {"status": "completed", "version": 2}
    assert c.cond("RankTableReady")["status"] == "True"
    assert any(e.reason == "RankTableWritten" for e in c.events)
    assert c.reconcile(1).configmap_data is None  # unchanged: not rewritten


def test_running_then_succeeded_and_ttl() -> None:
    c = started()
    assert c.status["phase"] == "Running"
    assert c.cond("Running")["status"] == "True"
    for r in range(4):
        c.finish(r, 0)
    plan = c.reconcile(5)
    assert c.status["phase"] == "Succeeded"
    assert c.status["completionTime"] == "2026-01-01T12:00:05Z"
    assert plan.requeue_after == 86400
    assert not c.deleted_job
    c.reconcile(86400)
    assert c.deleted_job


@pytest.mark.parametrize("code", [143, 134, 137, 255])
def test_retryable_exit_restarts_the_whole_job_with_backoff(code: int) -> None:
    c = started()
    old = {p["metadata"]["uid"] for p in c.pods.values()}
    c.finish(2, code)
    plan = c.reconcile()
    assert plan.restarted
    assert c.status["restarts"] == 1
    assert c.status["phase"] == "Restarting"
    assert c.pods == {}  # every rank goes, not just the failed one
    assert c.table() == {"status": "initializing"}
    assert c.configmap is not None and c.configmap["data"]["attempt"] == "1"
    assert c.cond("Restarting")["status"] == "True"
    assert f"exited {code}" in c.cond("Restarting")["message"]
    assert plan.requeue_after == 10
    assert [e.type for e in plan.events if e.reason == "RetryableExit"] == ["Warning"]
    c.reconcile(5)
    assert c.pods == {} and c.status["phase"] == "Restarting"
    c.reconcile(5)
    assert len(c.pods) == 4 and not old & {p["metadata"]["uid"] for p in c.pods.values()}
    assert {p["metadata"]["labels"][render.RESTART_LABEL] for p in c.pods.values()} == {"1"}
    assert c.cond("Restarting")["status"] == "False"
    c.schedule()
    c.run_all()
    c.reconcile()
    assert c.status["phase"] == "Running" and c.table()["status"] == "completed"
    assert c.configmap["data"]["attempt"] == "1"


def test_rank_table_of_another_attempt_is_rewritten_even_when_the_text_is_the_same() -> None:
    # A whole-node table (keyed by host IPs) reads the same in every attempt: the attempt key
    # alone tells the ranks which one they see.
    c = started()
    assert c.configmap is not None
    data = c.configmap["data"]
    text, version = data["hccl.json"], int(data["version"])
    data["attempt"] = "7"
    plan = c.reconcile(1)
    assert plan.configmap_data == ranktable.configmap_data(text, version + 1, 0)


def test_the_restart_names_the_rank_that_died_not_the_peers_that_lost_it() -> None:
    c = started()
    c.finish(0, 134)  # rank 0 lost its peer...
    c.finish(3, 137)  # ...because rank 3 was killed
    c.reconcile()
    assert c.cond("Restarting")["message"].startswith("rank 3 pod sn-rank-3 exited 137")


def test_backoff_doubles_and_limit_fails_the_job() -> None:
    assert [policy.backoff_delay(n, SETTINGS) for n in range(1, 6)] == [10, 20, 40, 60, 60]
    c = started()
    for n in range(1, 4):
        c.finish(0, 143)
        c.reconcile()
        assert c.status["restarts"] == n
        c.reconcile(policy.backoff_delay(n, SETTINGS))
        c.schedule()
        c.run_all()
        c.reconcile()
    c.finish(0, 143)
    c.reconcile()
    assert c.status["phase"] == "Failed"
    assert c.cond("Failed")["reason"] == "BackoffLimitExceeded"
    assert c.status["restarts"] == 3
    assert c.pods == {name: p for name, p in c.pods.items() if p["status"]["phase"] == "Failed"}


@pytest.mark.parametrize(
    ("code", "reason"), [(2, "InvalidConfiguration"), (3, "InvalidData"), (1, "Error")]
)
def test_permanent_exit_fails_at_once(code: int, reason: str) -> None:
    c = started()
    c.finish(1, code)
    plan = c.reconcile()
    assert not plan.restarted and c.status["restarts"] == 0
    assert c.status["phase"] == "Failed"
    failed = c.cond("Failed")
    assert failed["reason"] == reason and f"exited {code}" in failed["message"]
    # cleanPodPolicy Running: the other ranks are stopped, the failed one kept for its logs.
    assert list(c.pods) == ["sn-rank-1"]
    assert c.reconcile(1).create == []


def test_deleted_or_evicted_pod_restarts() -> None:
    c = started()
    del c.pods["sn-rank-3"]
    c.reconcile()
    assert c.status["restarts"] == 1
    c = started()
    c.pods["sn-rank-0"]["status"] = {
        "phase": "Failed",
        "reason": "Evicted",
        "message": "low memory",
    }
    c.reconcile()
    assert c.status["restarts"] == 1
    assert c.cond("Restarting")["reason"] == "Evicted"


def test_stale_pods_of_an_earlier_attempt_are_deleted_not_counted() -> None:
    c = started()
    # The operator died after writing the restart into the status, before deleting the pods.
    c.finish(0, 143)
    observed = Observed(c.job, list(c.pods.values()), service=c.service, configmap=c.configmap)
    crashed = policy.plan(observed, now=c.now, settings=SETTINGS)
    c.job["status"] = crashed.status
    plan = c.reconcile(30)
    assert len(plan.delete_pods) == 4 and not plan.restarted
    assert c.status["restarts"] == 1


def test_invalid_spec_fails_with_the_field_and_creates_nothing() -> None:
    c = Cluster(training={"batchSize": 10})
    plan = c.reconcile()
    assert plan.create == []
    assert c.status["phase"] == "Failed"
    failed = c.cond("Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.training.batchSize")
    assert [e.type for e in plan.events] == ["Warning"]
    assert c.reconcile(1).events == []  # reported once


def test_a_job_without_an_image_runs_the_operators_default_for_its_device_type() -> None:
    c = Cluster(image=None)
    del c.job["spec"]["image"]
    c.settings = dataclasses.replace(SETTINGS, trainer_images={"npu": "reg:5000/t-npu:1"})
    plan = c.reconcile()
    pods = [m for m in plan.create if m["kind"] == "Pod"]
    assert len(pods) == 4
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"reg:5000/t-npu:1"}
    # The job's own image wins over the default.
    c = Cluster(image="mine:2")
    c.settings = dataclasses.replace(SETTINGS, trainer_images={"npu": "reg:5000/t-npu:1"})
    pods = [m for m in c.reconcile().create if m["kind"] == "Pod"]
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"mine:2"}


@pytest.mark.parametrize("image", [None, ""])
def test_a_job_without_an_image_and_no_default_fails_naming_the_field_and_flag(
    image: str | None,
) -> None:
    c = Cluster(image=image)
    if image is None:
        del c.job["spec"]["image"]
    c.settings = dataclasses.replace(SETTINGS, trainer_images={"cpu": "reg:5000/t-cpu:1"})
    plan = c.reconcile()
    assert plan.create == []
    failed = c.cond("Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.image: not set"), failed["message"]
    assert "--trainer-image npu=REF" in failed["message"]
    assert "\n" not in failed["message"]


def test_deadline_and_suspend() -> None:
    c = Cluster(runPolicy={"activeDeadlineSeconds": 60})
    c.reconcile()
    c.schedule()
    c.run_all()
    assert c.reconcile(10).requeue_after == 50
    c.reconcile(50)
    assert c.status["phase"] == "Failed" and c.cond("Failed")["reason"] == "DeadlineExceeded"
    assert c.pods == {}
    c = started()
    c.job["spec"]["runPolicy"] = {"suspend": True}
    c.reconcile()
    assert c.status["phase"] == "Suspended" and c.pods == {}
    c.job["spec"]["runPolicy"] = {"suspend": False}
    c.reconcile()
    assert c.status["phase"] == "Creating" and len(c.pods) == 4 and c.status["restarts"] == 0


def test_a_job_created_suspended_says_so_in_a_condition_until_resumed() -> None:
    c = Cluster(runPolicy={"suspend": True})
    c.reconcile()
    assert c.status["phase"] == "Suspended" and c.pods == {}
    suspended = c.cond("Suspended")
    assert suspended["status"] == "True" and "spec.runPolicy.suspend" in suspended["message"]
    c.job["spec"]["runPolicy"] = {"suspend": False}
    c.reconcile(1)
    assert c.cond("Suspended")["status"] == "False" and c.cond("Suspended")["reason"] == "Resumed"
    assert c.status["phase"] == "Creating" and len(c.pods) == 4


@pytest.mark.parametrize("backoff_limit", [0, 3])
def test_resume_while_the_suspended_pods_terminate_is_no_failure(backoff_limit: int) -> None:
    c = Cluster(runPolicy={"backoffLimit": backoff_limit})
    c.graceful = True
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    c.job["spec"]["runPolicy"]["suspend"] = True
    c.reconcile()
    assert c.status["phase"] == "Suspended" and all(map(st.is_deleting, c.pods.values()))
    c.job["spec"]["runPolicy"]["suspend"] = False
    for _ in range(3):  # resumed while the old pods still shut down: wait for them
        c.reconcile(1)
        assert c.status["restarts"] == 0 and c.status["phase"] == "Creating", c.status
        assert c.pods and all(map(st.is_deleting, c.pods.values()))
    c.terminated()
    c.reconcile(1)
    assert c.status["restarts"] == 0 and c.status["phase"] == "Creating"
    assert len(c.pods) == 4 and not any(map(st.is_deleting, c.pods.values()))
    assert not any(e.type == "Warning" for e in c.events), c.events


def test_a_pod_deleted_by_someone_else_still_restarts_the_job() -> None:
    c = started()
    c.pods["sn-rank-2"]["metadata"]["deletionTimestamp"] = st.format_time(c.now)
    c.reconcile()
    assert c.status["restarts"] == 1 and c.cond("Restarting")["reason"] == "PodDeleted"


@pytest.mark.parametrize("clean", ["All", "Running", "None"])
def test_a_finished_job_keeps_its_rank_counts_after_cleanup(clean: str) -> None:
    c = Cluster(runPolicy={"cleanPodPolicy": clean})
    c.graceful = True
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    for r in range(4):
        c.finish(r, 0)
    c.reconcile(1)
    final = {"total": 4, "scheduled": 4, "running": 0, "succeeded": 4, "failed": 0}
    assert c.status["phase"] == "Succeeded" and c.status["ranks"] == final
    c.terminated()
    c.reconcile(1)
    c.reconcile(1)
    assert c.status["ranks"] == final


def test_a_failed_job_keeps_its_rank_counts_after_cleanup() -> None:
    c = Cluster(runPolicy={"cleanPodPolicy": "All"})
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    c.finish(1, 2)
    c.reconcile(1)
    assert c.status["phase"] == "Failed" and c.pods == {}
    c.reconcile(1)
    assert c.status["ranks"]["failed"] == 1 and c.status["ranks"]["running"] == 3


def test_set_condition_keeps_transition_time_unless_status_changes() -> None:
    conds = st.set_condition([], "Running", True, "A", "m", T0)
    later = st.set_condition(conds, "Running", True, "B", "n", T0 + timedelta(seconds=5))
    assert later[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z" and later[0]["reason"] == "B"
    flipped = st.set_condition(later, "Running", False, "C", "o", T0 + timedelta(seconds=9))
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:00:09Z"


def test_pods_of_a_deleted_namesake_are_waited_for() -> None:
    c = Cluster()
    plan = policy.plan(Observed(c.job, foreign_pods=2), now=T0, settings=SETTINGS)
    assert [m["kind"] for m in plan.create] == ["Service", "PodGroup", "ConfigMap"]
    assert plan.status["phase"] == "Creating" and plan.requeue_after == 1.0


def test_a_child_the_api_server_rejects_fails_the_job() -> None:
    c = Cluster()
    plan = policy.rejected(c.job, "Pod sn-rank-0 rejected by the API server: bad image", T0)
    assert plan.status["phase"] == "Failed"
    failed = st.get_condition(plan.status["conditions"], "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert "bad image" in failed["message"]


def device_ip(host: int, chip: int) -> str:
    """A distinct IPv4 address per chip in 127.0.0.0/8, for up to 40000 hosts."""
    return f"127.{100 + host // 256}.{host % 256}.{101 + chip}"


def _annotate(pod: dict[str, Any], host: int, chips: range) -> None:
    pod["spec"]["nodeName"] = f"node-{host}"
    pod["status"] = {"phase": "Pending", "hostIP": f"127.0.1.{host + 1}"}
    ann = {
        "pod_name": pod["metadata"]["name"],
        "server_id": f"127.0.1.{host + 1}",
        "host_ip": f"127.0.1.{host + 1}",
        "devices": [{"device_id": str(c), "device_ip": device_ip(host, c)} for c in chips],
    }
    pod["metadata"].setdefault("annotations", {})[ranktable.ANNOTATION] = json.dumps(ann)


def test_whole_node_pods_make_one_server_entry_per_node_keyed_by_host_ip() -> None:
    c = Cluster(devices={"type": "npu", "count": 16, "perPod": 8})
    c.reconcile()
    assert sorted(c.pods) == ["sn-node-0", "sn-node-1"]
    _annotate(c.pods["sn-node-1"], 0, range(7, -1, -1))  # chips listed in any order
    _annotate(c.pods["sn-node-0"], 1, range(8))
    c.reconcile()
    table = c.table()
    assert table["status"] == "completed" and table["server_count"] == "2"
    first, second = table["server_list"]
    assert first["server_id"] == "127.0.1.2" and second["server_id"] == "127.0.1.1"
    assert [d["rank_id"] for d in first["device"] + second["device"]] == [str(r) for r in range(16)]
    # Rank 8 + k on the chip of index k: the one its launcher's local rank k binds.
    assert [d["device_id"] for d in second["device"]] == [str(k) for k in range(8)]
    assert c.status["ranks"]["scheduled"] == 16 and c.status["ranks"]["total"] == 16


def test_multi_device_pods_sharing_a_node_are_keyed_by_pod_uid() -> None:
    c = Cluster(devices={"type": "npu", "count": 8, "perPod": 4})
    c.reconcile()
    _annotate(c.pods["sn-node-0"], 0, range(4))
    _annotate(c.pods["sn-node-1"], 0, range(4, 8))
    c.reconcile()
    ids = [s["server_id"] for s in c.table()["server_list"]]
    assert ids == [c.pods["sn-node-0"]["metadata"]["uid"], c.pods["sn-node-1"]["metadata"]["uid"]]


def test_a_pod_with_fewer_devices_than_per_pod_keeps_the_table_initializing() -> None:
    c = Cluster(devices={"type": "npu", "count": 16, "perPod": 8})
    c.reconcile()
    _annotate(c.pods["sn-node-0"], 0, range(8))
    _annotate(c.pods["sn-node-1"], 1, range(4))
    c.reconcile()
    assert c.table()["status"] == "initializing"
    cond = c.cond(st.RANKTABLE_READY)
    assert cond["reason"] == "InvalidDeviceAnnotation" and "perPod is 8" in cond["message"]


def test_scraped_progress_lands_in_the_status() -> None:
    c = started()
    progress = {"epoch": 2.5, "imagesPerSecond": 2150.0, "top1": 31.2}
    c.reconcile(progress=progress)
    assert c.status["progress"] == progress
    c.reconcile()  # nothing new scraped: the last progress stays
    assert c.status["progress"] == progress


def test_a_job_that_succeeded_shows_its_last_epoch_not_the_last_scrape() -> None:
    # Rank 0's endpoint is gone once it exits: the last scrape is from before the end, but
    # every rank exiting 0 means all spec.training.epochs are trained.
    c = started(training={"batchSize": 64, "epochs": 15})
    c.reconcile(progress={"epoch": 14.05, "imagesPerSecond": 2150.0, "top1": 31.2})
    for r in range(4):
        c.finish(r, 0)
    c.reconcile(5)
    assert c.status["phase"] == "Succeeded"
    assert c.status["progress"] == {"epoch": 15.0, "imagesPerSecond": 2150.0, "top1": 31.2}
    c.reconcile(5)  # and it stays so
    assert c.status["progress"]["epoch"] == 15.0
    # A job never scraped (progress off, or too short) still shows where it ended.
    quick = started()
    for r in range(4):
        quick.finish(r, 0)
    quick.reconcile(5)
    assert quick.status["progress"] == {"epoch": 240.0}


def test_a_failed_job_keeps_its_last_scraped_progress() -> None:
    c = started()
    progress = {"epoch": 3.5, "imagesPerSecond": 2150.0}
    c.reconcile(progress=progress)
    c.finish(0, 2)  # bad flags: fails at once
    c.reconcile(5)
    assert c.status["phase"] == "Failed" and c.status["progress"] == progress


def test_a_rank_table_too_large_for_a_configmap_is_not_written() -> None:
    # ~120 bytes a one-device pod (150 with real UIDs): 9600 overflow the 1 MiB of a ConfigMap.
    c = Cluster(devices={"type": "npu", "count": 9600}, training={"batchSize": 9600})
    c.reconcile()
    for i, pod in enumerate(c.pods.values()):
        _annotate(pod, i // 8, range(i % 8, i % 8 + 1))
    c.reconcile()
    assert c.table() == {"status": "initializing"}
    cond = c.cond(st.RANKTABLE_READY)
    assert cond["reason"] == "RankTableTooLarge"
    assert cond["message"].startswith("spec.devices.perPod: the rank table of 9600 pods takes")


# --- hccl/rankIndex, the device annotation's keys, A3 super-pod tables -----------------------


def test_rank_index_is_written_kept_across_restarts_and_makes_the_rank_ids() -> None:
    c = started()
    key = ranktable.RANK_INDEX_ANNOTATION
    first = {n: p["metadata"]["uid"] for n, p in c.pods.items()}
    assert {n: p["metadata"]["annotations"][key] for n, p in c.pods.items()} == {
        f"sn-rank-{r}": str(r) for r in range(4)
    }
    c.finish(2, 143)
    c.reconcile()
    c.reconcile(10)  # after the backoff: the replacement pods
    assert c.status["restarts"] == 1 and set(c.pods) == set(first)
    assert all(c.pods[n]["metadata"]["uid"] != uid for n, uid in first.items())
    assert all(p["metadata"]["annotations"][key] == n[-1] for n, p in c.pods.items())
    c.schedule()
    c.reconcile()
    rank_ids = {s["server_id"]: s["device"][0]["rank_id"] for s in c.table()["server_list"]}
    assert rank_ids == {c.pods[f"sn-rank-{r}"]["metadata"]["uid"]: str(r) for r in range(4)}


def test_a_changed_rank_index_blocks_the_table_and_a_missing_one_is_the_pods_index() -> None:
    c = Cluster()
    c.reconcile()
    c.schedule()
    c.pods["sn-rank-1"]["metadata"]["annotations"][ranktable.RANK_INDEX_ANNOTATION] = "3"
    c.reconcile()
    assert c.table() == {"status": "initializing"}
    cond = c.cond(st.RANKTABLE_READY)
    assert cond["reason"] == "InvalidRankIndex"
    assert "pod sn-rank-1 is pod 1 of the job" in cond["message"]
    # Pods of an operator that did not write it yet: their index.
    for pod in c.pods.values():
        del pod["metadata"]["annotations"][ranktable.RANK_INDEX_ANNOTATION]
    c.reconcile()
    assert c.table()["status"] == "completed" and c.cond(st.RANKTABLE_READY)["status"] == "True"


def test_a_chip_without_a_roce_address_blocks_the_table_with_a_reason() -> None:
    c = Cluster()
    c.reconcile()
    c.schedule()
    pod = c.pods["sn-rank-3"]
    note = json.loads(pod["metadata"]["annotations"][ranktable.ANNOTATION])
    note["devices"][0]["device_ip"] = "-1"
    pod["metadata"]["annotations"][ranktable.ANNOTATION] = json.dumps(note)
    c.reconcile()
    assert c.table() == {"status": "initializing"}
    cond = c.cond(st.RANKTABLE_READY)
    assert cond["status"] == "False" and cond["reason"] == "InvalidDeviceAnnotation"
    assert "of pod sn-rank-3: devices[0].device_ip" in cond["message"]
    assert "no RoCE address configured" in cond["message"]


def _rekey(c: Cluster, key: str) -> None:
    for pod in c.pods.values():
        notes = pod["metadata"]["annotations"]
        notes[key] = notes.pop(ranktable.ANNOTATION)


def test_huawei_npu_pods_are_read_by_the_npu_configuration_annotation() -> None:
    c = Cluster(devices={"type": "npu", "count": 4, "resourceName": "huawei.com/npu"})
    c.reconcile()
    pod = next(iter(c.pods.values()))
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"huawei.com/npu": "1"}
    c.schedule()
    _rekey(c, ranktable.NPU_ANNOTATION)
    c.reconcile()
    assert c.table()["status"] == "completed"
    ranktable.validate_rank_table(c.table(), 0, 4)


@pytest.mark.parametrize(
    ("annotations", "scheduling"),
    [
        ({"huawei.com/schedule_policy": "chip2-node16-sp"}, {}),
        ({}, {"nodeSelector": {"accelerator-type": "module-a3-8-super-pod"}}),
    ],
)
def test_a_super_pod_job_gets_a_v12_table_grouped_by_super_pod(
    annotations: dict[str, str], scheduling: dict[str, Any]
) -> None:
    c = Cluster(scheduling=scheduling)
    c.job["metadata"]["annotations"] = annotations
    c.reconcile()
    c.schedule()
    for r, pod in enumerate(sorted(c.pods.values(), key=st.pod_rank)):  # type: ignore[arg-type]
        notes = pod["metadata"]["annotations"]
        note = json.loads(notes[ranktable.ANNOTATION])
        note["super_pod_id"] = r // 2
        note["devices"][0]["super_device_id"] = str(r % 2)
        notes[ranktable.ANNOTATION] = json.dumps(note)
    c.reconcile()
    table = c.table()
    assert table["version"] == "1.2" and c.cond(st.RANKTABLE_READY)["status"] == "True"
    assert [sp["super_pod_id"] for sp in table["super_pod_list"]] == ["0", "1"]
    ranktable.validate_rank_table(table, 3, 4)
    # A super-pod job whose plugin reports no super-pod ids: no table, and the reason.
    for pod in c.pods.values():
        note = json.loads(pod["metadata"]["annotations"][ranktable.ANNOTATION])
        del note["super_pod_id"]
        pod["metadata"]["annotations"][ranktable.ANNOTATION] = json.dumps(note)
    c.reconcile()
    assert c.table() == {"status": "initializing"}
    assert "no super_pod_id" in c.cond(st.RANKTABLE_READY)["message"]


def test_a_finished_job_keeps_its_outcome_when_its_spec_is_edited_invalid() -> None:
    # An invalid edit racing the job's end (the cluster soak's spec-edit fault) made it
    # Failed InvalidSpec, with its Succeeded condition still True.
    c = started()
    for r in range(4):
        c.finish(r, 0)
    c.reconcile(5)
    assert c.status["phase"] == "Succeeded"
    c.job["spec"]["training"]["batchSize"] = 10
    plan = c.reconcile(1)
    assert c.status["phase"] == "Succeeded"
    assert not st.condition_true(c.status["conditions"], "Failed")
    assert plan.events == []


@pytest.mark.parametrize(("clean", "left"), [("Running", 1), ("All", 0), ("None", 4)])
def test_a_running_job_edited_invalid_fails_and_its_pods_stop_as_its_policy_says(
    clean: str, left: int
) -> None:
    # In the cluster soak, a job an edit failed InvalidSpec kept its rank pods running.
    c = Cluster(runPolicy={"cleanPodPolicy": clean})
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    c.finish(3, 0)
    c.job["spec"]["training"]["batchSize"] = 10
    c.reconcile(1)
    assert c.status["phase"] == "Failed"
    assert c.cond("Failed")["reason"] == "InvalidSpec"
    assert len(c.pods) == left


# --- the job policy (--job-policy) ------------------------------------------------------------


def policy_settings(level: str) -> policy.Settings:
    return dataclasses.replace(SETTINGS, job_policy=level)


def test_the_default_job_policy_is_baseline() -> None:
    assert policy.Settings().job_policy == "baseline"
    with pytest.raises(ValueError, match="job policy 'strict'"):
        policy.Settings(job_policy="strict")


@pytest.mark.parametrize(
    ("spec", "field", "refused_by"),
    [
        (
            {"podTemplate": {"spec": {"hostNetwork": True}}},
            "spec.podTemplate.spec.hostNetwork",
            ("baseline", "restricted"),
        ),
        (
            {
                "podTemplate": {
                    "spec": {
                        "containers": [{"name": "trainer", "securityContext": {"privileged": True}}]
                    }
                }
            },
            "spec.podTemplate.spec.containers[trainer].securityContext.privileged",
            ("baseline", "restricted"),
        ),
        (
            {"data": {"volume": {"hostPath": {"path": "/"}}, "path": "/data"}},
            "spec.data.volume.hostPath",
            ("baseline", "restricted"),
        ),
        (
            {"checkpoint": {"volume": {"nfs": {"server": "n", "path": "/"}}}},
            "spec.checkpoint.volume.nfs",
            ("restricted",),
        ),
        (
            # The template's own volume of our name: the template is where it is written.
            {
                "podTemplate": {
                    "spec": {"volumes": [{"name": "checkpoint", "hostPath": {"path": "/"}}]}
                }
            },
            "spec.podTemplate.spec.volumes[checkpoint].hostPath",
            ("baseline", "restricted"),
        ),
        (
            {"podTemplate": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}},
            "spec.podTemplate.spec.containers[sidecar].securityContext.allowPrivilegeEscalation",
            ("restricted",),
        ),
        (
            {
                "podTemplate": {
                    "metadata": {
                        "annotations": {
                            "container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"
                        }
                    }
                }
            },
            "spec.podTemplate.metadata.annotations[container.apparmor.security.beta.kubernetes.io/trainer]",
            ("baseline", "restricted"),
        ),
        (
            # Not Pod Security's rule but the job policy's own: another ServiceAccount's rights.
            {"podTemplate": {"spec": {"serviceAccountName": "builder"}}},
            "spec.podTemplate.spec.serviceAccountName",
            ("baseline", "restricted"),
        ),
        (
            {"podTemplate": {"spec": {"serviceAccount": "builder"}}},
            "spec.podTemplate.spec.serviceAccount",
            ("baseline", "restricted"),
        ),
    ],
)
def test_the_job_policy_refuses_a_job_naming_its_field_and_the_setting(
    spec: dict[str, Any], field: str, refused_by: tuple[str, ...]
) -> None:
    for level in ("privileged", "baseline", "restricted"):
        c = Cluster(**spec)
        c.settings = policy_settings(level)
        plan = c.reconcile()
        if level not in refused_by:
            assert c.status["phase"] == "Creating", (level, c.status)
            assert len(c.pods) == 4
            continue
        assert plan.create == [] and c.pods == {}
        assert c.status["phase"] == "Failed"
        failed = c.cond("Failed")
        assert failed["reason"] == "InvalidSpec"
        message = failed["message"]
        assert message.startswith(f'{field}: refused by the operator\'s job policy "{level}"')
        assert "(--job-policy, chart value operator.jobPolicy)" in message
        assert "\n" not in message
        assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]


def test_the_default_service_account_and_the_token_are_the_jobs_to_choose() -> None:
    template = {"spec": {"serviceAccountName": "default", "automountServiceAccountToken": True}}
    c = Cluster(podTemplate=template)
    c.settings = policy_settings("restricted")
    c.reconcile()
    assert len(c.pods) == 4


def test_every_refused_field_is_named_on_one_line() -> None:
    c = Cluster(podTemplate={"spec": {"hostNetwork": True, "hostPID": True}})
    c.reconcile()
    message = c.cond("Failed")["message"]
    assert message.startswith("spec.podTemplate.spec.hostNetwork: ")
    assert message.endswith("host namespaces are not allowed; also spec.podTemplate.spec.hostPID")


@pytest.mark.parametrize(("clean", "left"), [("Running", 0), ("None", 4)])
def test_a_running_job_a_stricter_policy_refuses_fails_and_stops_as_its_policy_says(
    clean: str, left: int
) -> None:
    # The operator restarted with a stricter --job-policy: the job's running pods run what
    # it may no longer ask for, the same as a spec edited invalid.
    sidecar = {"containers": [{"name": "sidecar", "image": "busybox"}]}
    c = Cluster(podTemplate={"spec": sidecar}, runPolicy={"cleanPodPolicy": clean})
    c.reconcile()
    c.schedule()
    c.run_all()
    c.reconcile()
    assert c.status["phase"] == "Running"
    c.settings = policy_settings("restricted")
    c.reconcile(1)
    assert c.status["phase"] == "Failed" and c.cond("Failed")["reason"] == "InvalidSpec"
    assert len(c.pods) == left


def test_npu_pods_get_the_device_group_setting() -> None:
    c = Cluster()
    c.settings = dataclasses.replace(SETTINGS, npu_device_group=1001)
    c.reconcile()
    for pod in c.pods.values():
        assert pod["spec"]["securityContext"]["supplementalGroups"] == [1001]


def test_rank_pods_get_the_rank_resources_setting() -> None:
    c = Cluster()
    resources = render.rank_resources([("npu", {"cpu": "6", "memory": "48Gi"})])
    c.settings = dataclasses.replace(SETTINGS, rank_resources=resources)
    c.reconcile()
    assert c.pods
    for pod in c.pods.values():
        requests = pod["spec"]["containers"][0]["resources"]["requests"]
        assert (requests["cpu"], requests["memory"]) == ("6", "48Gi")


# --- children that are not the job's -----------------------------------------------------


def test_a_service_of_the_jobs_name_it_does_not_own_is_left_alone_and_the_job_waits() -> None:
    c = Cluster()
    c.foreign = (("Service", "sn"),)
    plan = c.reconcile()
    # Nothing made with the name taken: no Service, no pods (the PodGroup and the rank-table
    # ConfigMap have names of their own).
    assert [m["kind"] for m in plan.create] == ["PodGroup", "ConfigMap"]
    assert c.service is None and c.pods == {}
    created = c.cond("Created")
    assert (created["status"], created["reason"]) == ("False", "ChildNotOwned")
    assert created["message"].startswith(
        "Service sn already exists and is not this job's (no owner reference to its uid job-uid)"
    )
    assert created["message"].endswith("delete it or rename the job")
    assert c.status["phase"] == "Pending"
    assert st.get_condition(c.status["conditions"], "Failed") is None  # it waits
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ChildNotOwned")]
    assert c.reconcile(60).events == []  # said once, while it stays so
    # Gone (deleted by its owner): the job starts.
    c.foreign = ()
    plan = c.reconcile(60)
    assert c.service is not None and len(c.pods) == 4
    assert c.cond("Created")["status"] == "True"


def test_a_foreign_podgroup_and_configmap_are_named_and_never_written() -> None:
    c = Cluster()
    c.foreign = (("ConfigMap", "sn-ranktable"), ("PodGroup", "sn"))
    plan = c.reconcile()
    assert [m["kind"] for m in plan.create] == ["Service"]
    assert plan.configmap_data is None
    message = c.cond("Created")["message"]
    assert message.startswith("ConfigMap sn-ranktable, PodGroup sn already exist and are not")
    assert message.endswith("delete them or rename the job")


def test_a_running_job_whose_rank_table_configmap_is_taken_carries_on_without_writing_it() -> None:
    c = started()
    assert c.status["phase"] == "Running"
    # Someone deleted the job's ConfigMap and made one of its own under that name.
    c.configmap = None
    c.foreign = (("ConfigMap", "sn-ranktable"),)
    plan = c.reconcile(5)
    assert plan.configmap_data is None and plan.create == []
    assert c.status["phase"] == "Running" and c.cond("Created")["status"] == "True"
    ready = c.cond(st.RANKTABLE_READY)
    assert (ready["status"], ready["reason"]) == ("False", "ChildNotOwned")
    assert ready["message"].startswith("ConfigMap sn-ranktable already exists")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ChildNotOwned")]
