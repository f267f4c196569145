"""The operator against the REAL control plane (apiserver, scheduler, garbage collector),
with the SIMULATED kubelet and Ascend device plugin (tests/sim) playing the nodes.

The operator runs as its own process (`python -m shufflenet_operator --namespace NS`), as
in its Deployment, so killing and restarting it mid-job is what a pod restart would be.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import uuid

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from sim.node_agent import ASCEND_910_ANNOTATION, NPU_RESOURCE, NodeAgent, wait_for

from k8s.operator_harness import RESYNC_S, Jobs, OperatorProcess, free_port, job_manifest
from k8s.volcano import podgroup_api
from shufflenet_contract import ranktable
from shufflenet_operator import render
from shufflenet_trainer.metrics.exporter import MetricsExporter
from shufflenet_trainer.train.config import parse_config

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
NPU = ranktable.RESOURCE_NPU


def _reconcile_count(exposition: str) -> float:
    """shufflenet_operator_reconcile_seconds_count from the operator's /metrics."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "shufflenet_operator_reconcile_seconds_count":
                return sample.value
    raise AssertionError("shufflenet_operator_reconcile_seconds_count not exported")


def _table(core: client.CoreV1Api, ns: str, job: str) -> tuple[dict, str]:
    cm = core.read_namespaced_config_map(f"{job}-ranktable", ns)
    return ranktable.parse(cm.data["hccl.json"]), cm.data["version"]


def test_npu_job_gets_pods_service_and_a_rank_table_once_every_pod_has_chips(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    ns = jobs.namespace
    first = node_agent.add_node(npus=4)
    created = jobs.create(job_manifest("npu8"))
    uid = created["metadata"]["uid"]

    pods = wait_for(lambda: len(p := jobs.pods("npu8")) == 8 and p, what="8 rank pods")
    assert [p.metadata.name for p in pods] == [f"npu8-rank-{r}" for r in range(8)]
    for rank, pod in enumerate(pods):
        (owner,) = pod.metadata.owner_references
        assert owner.uid == uid and owner.controller and owner.kind == "ShuffleNetTrainingJob"
        assert pod.metadata.labels[render.RANK_LABEL] == str(rank)
        (c,) = pod.spec.containers
        assert c.resources.limits == {NPU_RESOURCE: "1"}
        env = {e.name: e.value for e in c.env}
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "8"
        assert env["MASTER_ADDR"] == f"npu8-rank-0.npu8.{ns}.svc"
        assert env["RANK_TABLE_FILE"] == "/user/serverid/devindex/config/hccl.json"
        # What a rank recognises its attempt's table by; the API server took the fieldRefs.
        assert env["SHUFFLENET_ATTEMPT"] == "0"
        refs = {e.name: e.value_from.field_ref.field_path for e in c.env if e.value_from}
        assert refs == {
            "POD_IP": "status.podIP",
            "POD_UID": "metadata.uid",
            "HOST_IP": "status.hostIP",
        }
        assert pod.spec.restart_policy == "Never" and pod.spec.subdomain == "npu8"
    svc = core_v1.read_namespaced_service("npu8", ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == {render.JOB_LABEL: "npu8"}
    assert svc.metadata.owner_references[0].uid == uid

    # 4 chips for 8 ranks: half the pods are placed (and annotated), the table must wait.
    wait_for(
        lambda: jobs.status("npu8").get("ranks", {}).get("scheduled") == 4,
        what="4 ranks scheduled",
    )
    table, _ = _table(core_v1, ns, "npu8")
    assert table == {"status": "initializing"}
    assert jobs.condition("npu8", "RankTableReady").get("status") == "False"
    assert jobs.status("npu8")["phase"] == "Pending"

    second = node_agent.add_node(npus=4)
    status = jobs.wait_phase("npu8", "Running")
    assert status["ranks"] == {
        "total": 8,
        "scheduled": 8,
        "running": 8,
        "succeeded": 0,
        "failed": 0,
    }
    assert status["rankTable"]["status"] == "completed"
    table, version = _table(core_v1, ns, "npu8")
    assert version == str(status["rankTable"]["version"])
    assert core_v1.read_namespaced_config_map("npu8-ranktable", ns).data["attempt"] == "0"
    pods = jobs.pods("npu8")
    for rank in range(8):
        ranktable.validate_rank_table(table, rank, 8)
    # One entry per pod, keyed by its UID, in rank order; the chips the plugin announced.
    assert [s["server_id"] for s in table["server_list"]] == [p.metadata.uid for p in pods]
    nodes = {p.spec.node_name for p in pods}
    assert nodes == {first.name, second.name}
    for rank, (entry, pod) in enumerate(zip(table["server_list"], pods, strict=True)):
        ann = json.loads(pod.metadata.annotations[ASCEND_910_ANNOTATION])
        (dev,) = entry["device"]
        assert dev == {**ann["devices"][0], "rank_id": str(rank)}
        assert ipaddress.ip_address(dev["device_ip"]) in LOOPBACK
    for type_ in ("Created", "Scheduled", "RankTableReady", "Running"):
        assert jobs.condition("npu8", type_)["status"] == "True", type_
    reasons = {e.reason for e in jobs.events("npu8")}
    assert {"PodsCreated", "AllRanksScheduled", "RankTableWritten", "AllRanksRunning"} <= reasons

    for pod in pods:
        node_agent.finish(pod, exit_code=0)
    status = jobs.wait_phase("npu8", "Succeeded")
    assert status["completionTime"] and status["restarts"] == 0


def test_retryable_exit_restarts_the_whole_job(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    jobs.create(job_manifest("retry", count=2))
    jobs.wait_phase("retry", "Running")
    before = {p.metadata.uid for p in jobs.pods("retry")}
    _, version = _table(core_v1, jobs.namespace, "retry")

    node_agent.finish(jobs.pods("retry")[1], exit_code=143)
    wait_for(lambda: jobs.status("retry").get("restarts") == 1, what="restarts == 1")
    # The backoff is short here: the condition may already be back to False, its Event stays.
    assert jobs.condition("retry", "Restarting")["lastTransitionTime"]
    warnings = [e for e in jobs.events("retry") if e.reason == "RetryableExit"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "exited 143" in warnings[0].message and "restart 1 of 2" in warnings[0].message

    status = jobs.wait_phase("retry", "Running")
    pods = jobs.pods("retry")
    assert len(pods) == 2 and not before & {p.metadata.uid for p in pods}
    assert {p.metadata.labels[render.RESTART_LABEL] for p in pods} == {"1"}
    assert status["restarts"] == 1
    table, new_version = _table(core_v1, jobs.namespace, "retry")
    assert int(new_version) > int(version)
    assert [s["server_id"] for s in table["server_list"]] == [p.metadata.uid for p in pods]

    metrics = operator.metrics()
    ns = jobs.namespace
    assert f'shufflenet_operator_job_restarts_total{{job="retry",namespace="{ns}"}} 1.0' in metrics
    assert f'shufflenet_operator_jobs{{namespace="{ns}",phase="Running"}} 1.0' in metrics
    assert "shufflenet_operator_reconcile_seconds_count" in metrics
    assert "shufflenet_operator_ranktable_seconds_count" in metrics

    # `snjob status` tells the same story through kubectl.
    snjob = [sys.executable, "-m", "shufflenet_trainer.snjob", "status", "-n", ns]
    env = operator.cp.env()
    shown = subprocess.run([*snjob, "retry"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"job {ns}/retry: Running (2 x npu, restarts 1 of 2)"
    assert any("RetryableExit: rank 1 pod retry-rank-1 exited 143" in line for line in lines)
    missing = subprocess.run([*snjob, "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "snjob status: error:" in missing.stderr
    assert "not found" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_exit_2_fails_the_job_without_restart_and_bad_specs_fail_with_the_field(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    jobs.create(job_manifest("bad-config", count=2))
    jobs.wait_phase("bad-config", "Running")
    node_agent.finish(jobs.pods("bad-config")[0], exit_code=2)
    status = jobs.wait_phase("bad-config", "Failed")
    failed = jobs.condition("bad-config", "Failed")
    assert failed["reason"] == "InvalidConfiguration" and "exited 2" in failed["message"]
    assert status["restarts"] == 0
    # cleanPodPolicy Running: the surviving rank is stopped, the failed pod stays for its logs.
    wait_for(lambda: len(jobs.pods("bad-config")) == 1, what="running rank deleted")
    assert jobs.pods("bad-config")[0].metadata.name == "bad-config-rank-0"

    jobs.create(job_manifest("bad-batch", count=4, training={"batchSize": 10}))
    jobs.wait_phase("bad-batch", "Failed")
    failed = jobs.condition("bad-batch", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.training.batchSize")
    assert jobs.pods("bad-batch") == []
    # A chip count no Ascend node gives one pod.
    nine = {"type": "npu", "count": 18, "perPod": 9}
    jobs.create(job_manifest("bad-npus", count=18, devices=nine))
    jobs.wait_phase("bad-npus", "Failed")
    failed = jobs.condition("bad-npus", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.devices.perPod: 9 NPUs in a pod")
    assert jobs.pods("bad-npus") == []

    # A podTemplate that makes invalid pods: the API server's refusal fails the job.
    bad_template = {"spec": {"containers": [{"name": "trainer", "image": ""}]}}
    jobs.create(job_manifest("bad-template", count=2, podTemplate=bad_template))
    jobs.wait_phase("bad-template", "Failed")
    failed = jobs.condition("bad-template", "Failed")
    assert failed["reason"] == "InvalidSpec" and "image" in failed["message"]
    assert jobs.pods("bad-template") == []

    # CPU ranks: no device resource, no rank table.
    jobs.create(job_manifest("cpu2", device="cpu", count=2))
    jobs.wait_phase("cpu2", "Running")
    for pod in jobs.pods("cpu2"):
        (c,) = pod.spec.containers
        assert not (c.resources and c.resources.limits)
        assert "RANK_TABLE_FILE" not in {e.name for e in c.env}
    names = {cm.metadata.name for cm in core_v1.list_namespaced_config_map(jobs.namespace).items}
    assert "cpu2-ranktable" not in names
    assert "RankTableReady" not in {c["type"] for c in jobs.status("cpu2")["conditions"]}


def test_operator_restart_mid_job_duplicates_nothing(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    jobs.create(job_manifest("steady", count=4))
    jobs.wait_phase("steady", "Running")
    before = [(p.metadata.name, p.metadata.uid) for p in jobs.pods("steady")]
    table_before = _table(core_v1, jobs.namespace, "steady")

    def settled() -> str | None:
        version = jobs.get("steady")["metadata"]["resourceVersion"]
        time.sleep(1)
        return version if jobs.get("steady")["metadata"]["resourceVersion"] == version else None

    version = wait_for(settled, what="the job's status to settle")
    operator.stop(kill=True)
    operator.start()
    # The new operator lists the job and its pods: give it a few reconciles' time.
    wait_for(
        lambda: _reconcile_count(operator.metrics()) >= 1,
        what="a reconcile by the new operator",
    )
    assert [(p.metadata.name, p.metadata.uid) for p in jobs.pods("steady")] == before
    assert _table(core_v1, jobs.namespace, "steady") == table_before
    assert jobs.status("steady")["phase"] == "Running"
    assert jobs.status("steady")["restarts"] == 0
    # Nothing to do for the new operator, so it wrote nothing.
    assert jobs.get("steady")["metadata"]["resourceVersion"] == version

    for pod in jobs.pods("steady"):
        node_agent.finish(pod, exit_code=0)
    jobs.wait_phase("steady", "Succeeded")
    assert [(p.metadata.name, p.metadata.uid) for p in jobs.pods("steady")] == before


def test_deleting_the_job_removes_every_child(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    jobs.create(job_manifest("doomed", count=2))
    jobs.wait_phase("doomed", "Running")
    ns = jobs.namespace
    jobs.delete("doomed")

    def children_gone() -> bool:
        pods = jobs.pods("doomed")
        svcs = core_v1.list_namespaced_service(ns).items
        cms = [
            c
            for c in core_v1.list_namespaced_config_map(ns).items
            if c.metadata.name.startswith("doomed")
        ]
        return not pods and not svcs and not cms

    # The garbage collector of the real controller manager does it (the operator adds no
    # finalizer); the operator must not re-create anything meanwhile. The collector notices
    # a new CRD's objects only at its next discovery resync (30 s in 1.20), hence the wait.
    wait_for(children_gone, timeout=120, interval=0.5, what="children garbage-collected")
    # ...and it stays so past the operator's next resync.
    time.sleep(RESYNC_S + 2)
    assert children_gone()


def test_suspend_resume_and_ttl_after_finished(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    # A TTL of a few seconds: completionTime has whole-second precision, so with 1 s the job
    # could be gone before the test sees it Succeeded.
    jobs.create(job_manifest("pause", count=2, runPolicy={"ttlSecondsAfterFinished": 4}))
    jobs.wait_phase("pause", "Running")
    first = {p.metadata.uid for p in jobs.pods("pause")}

    jobs.patch_spec("pause", {"runPolicy": {"suspend": True}})
    jobs.wait_phase("pause", "Suspended")
    wait_for(lambda: jobs.pods("pause") == [], what="rank pods deleted while suspended")
    jobs.patch_spec("pause", {"runPolicy": {"suspend": False}})
    jobs.wait_phase("pause", "Running")
    pods = jobs.pods("pause")
    assert len(pods) == 2 and not first & {p.metadata.uid for p in pods}
    assert jobs.status("pause")["restarts"] == 0  # a suspension is not a failure

    for pod in pods:
        node_agent.finish(pod, exit_code=0)
    jobs.wait_phase("pause", "Succeeded")

    wait_for(lambda: jobs.gone("pause"), timeout=30, what="job deleted after the TTL")


def test_whole_node_pods_get_one_rank_table_entry_per_node(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    nodes = [node_agent.add_node(npus=8), node_agent.add_node(npus=8)]
    jobs.create(job_manifest("nodes", count=16, devices={"type": "npu", "count": 16, "perPod": 8}))
    status = jobs.wait_phase("nodes", "Running")
    assert status["ranks"]["total"] == 16 and status["ranks"]["running"] == 16
    assert status["rankTable"]["status"] == "completed"
    pods = jobs.pods("nodes")
    assert [p.metadata.name for p in pods] == ["nodes-node-0", "nodes-node-1"]
    assert {p.spec.node_name for p in pods} == {n.name for n in nodes}
    for index, pod in enumerate(pods):
        (c,) = pod.spec.containers
        assert c.resources.limits == {NPU_RESOURCE: "8"}
        assert c.args[-2:] == ["--nproc", "8"]
        env = {e.name: e.value for e in c.env}
        assert env["RANK"] == str(8 * index) and env["LOCAL_WORLD_SIZE"] == "8"
    table, _ = _table(core_v1, jobs.namespace, "nodes")
    for rank in range(16):
        ranktable.validate_rank_table(table, rank, 16)
    # Whole nodes: one entry per node, keyed by its host IP; chips and rank ids in order.
    assert [s["server_id"] for s in table["server_list"]] == [p.status.host_ip for p in pods]
    for index, (entry, pod) in enumerate(zip(table["server_list"], pods, strict=True)):
        ann = json.loads(pod.metadata.annotations[ASCEND_910_ANNOTATION])
        ranks = [str(8 * index + k) for k in range(8)]
        assert entry["device"] == [
            {**d, "rank_id": r} for d, r in zip(ann["devices"], ranks, strict=True)
        ]


def test_gang_scheduling_creates_a_podgroup_before_the_pods(
    node_agent: NodeAgent,
    operator: OperatorProcess,
    jobs: Jobs,
    k8s_api: client.ApiClient,
) -> None:
    node_agent.add_node(npus=8)
    gang = {"schedulerName": "default-scheduler", "gang": True, "queue": "research"}
    # Without Volcano's API the job fails at once, saying which field asks for it.
    jobs.create(job_manifest("novolcano", count=2, scheduling=gang))
    status = jobs.wait_phase("novolcano", "Failed")
    failed = jobs.condition("novolcano", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.scheduling.gang: true needs Volcano's PodGroup API")
    assert jobs.pods("novolcano") == [] and status["restarts"] == 0

    custom = client.CustomObjectsApi(k8s_api)
    with podgroup_api(k8s_api):
        created = jobs.create(job_manifest("gang", count=4, scheduling=gang))
        jobs.wait_phase("gang", "Running")
        group = custom.get_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", jobs.namespace, "podgroups", "gang"
        )
        assert group["spec"] == {
            "minMember": 4,
            "queue": "research",
            "minResources": {NPU_RESOURCE: "4"},
        }
        assert group["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        for pod in jobs.pods("gang"):
            assert pod.metadata.annotations[render.PODGROUP_ANNOTATION] == "gang"
            # Written before any pod (resource versions are etcd's revisions: one order).
            assert int(group["metadata"]["resourceVersion"]) < int(pod.metadata.resource_version)
            node_agent.finish(pod, exit_code=0)
        jobs.wait_phase("gang", "Succeeded")


def test_progress_is_scraped_from_rank_0s_metrics(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    node_agent.add_node(npus=8)
    port = free_port()
    jobs.create(job_manifest("live", count=2, metrics={"port": port}))
    jobs.wait_phase("live", "Running")
    rank0 = jobs.pods("live")[0]
    # The trainer's own exporter, serving on rank 0's (loopback) pod IP as the pod would.
    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "16"], world_size=2, rank=0)
    exporter = MetricsExporter(cfg, {"JOB_NAME": "live"})
    exporter.start(port, addr=rank0.status.pod_ip)
    try:
        exporter.on_start({"folder": None, "device": "cpu", "epochs": 4, "steps_per_epoch": 10})
        exporter.on_epoch(
            {"epoch": 1, "loss": 5.0, "images_per_sec": 2213.46, "val_top1": 12.5, "val_top5": 40.0}
        )
        wait_for(
            lambda: (
                jobs.status("live").get("progress")
                == {"epoch": 2.0, "imagesPerSecond": 2213.5, "top1": 12.5}
            ),
            timeout=30,
            what="status.progress from rank 0's metrics",
        )
    finally:
        exporter.close()
    for pod in jobs.pods("live"):
        node_agent.finish(pod, exit_code=0)
    # The finished job shows where it ended (spec.training.epochs: 1), the rest as scraped.
    assert jobs.wait_phase("live", "Succeeded")["progress"] == {
        "epoch": 1.0,
        "imagesPerSecond": 2213.5,
        "top1": 12.5,
    }


def test_jobs_outside_the_watched_namespaces_are_left_alone(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=8)
    other = f"{jobs.namespace}-other"
    core_v1.create_namespace({"metadata": {"name": other}})
    try:
        outside = Jobs(jobs.custom.api_client, other)
        outside.create(job_manifest("elsewhere", count=2))
        # A job created after it in the watched namespace is reconciled: the operator is
        # live and has had its chance at the other one.
        jobs.create(job_manifest("here", count=2))
        jobs.wait_phase("here", "Running")
        time.sleep(2)
        assert outside.status("elsewhere") == {}
        assert outside.pods("elsewhere") == []
    finally:
        core_v1.delete_namespace(other)


def _patch_annotations(core: client.CoreV1Api, pod: client.V1Pod, notes: dict[str, str]) -> None:
    core.patch_namespaced_pod(
        pod.metadata.name, pod.metadata.namespace, {"metadata": {"annotations": notes}}
    )


def _ready_reason(jobs: Jobs, name: str, reason: str) -> dict:
    return wait_for(
        lambda: (c := jobs.condition(name, "RankTableReady")).get("reason") == reason and c,
        what=f"RankTableReady reason {reason}",
    )


def test_huawei_npu_job_keeps_its_rank_indexes_across_a_restart(
    operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    # Nodes of a newer device plugin: resource huawei.com/npu, annotation ascend-npu-...
    with NodeAgent(core_v1, name=f"npu{uuid.uuid4().hex[:6]}", npu_resource=NPU) as agent:
        agent.add_node(npus=4)
        devices = {"type": "npu", "count": 2, "resourceName": NPU}
        jobs.create(job_manifest("hwnpu", count=2, devices=devices))
        jobs.wait_phase("hwnpu", "Running")
        first = jobs.pods("hwnpu")
        for rank, pod in enumerate(first):
            assert pod.spec.containers[0].resources.limits == {NPU: "1"}
            assert pod.metadata.annotations[ranktable.RANK_INDEX_ANNOTATION] == str(rank)
            assert ranktable.NPU_ANNOTATION in pod.metadata.annotations
        table, _ = _table(core_v1, jobs.namespace, "hwnpu")
        assert [s["server_id"] for s in table["server_list"]] == [p.metadata.uid for p in first]

        agent.finish(first[1], exit_code=143)
        wait_for(lambda: jobs.status("hwnpu").get("restarts") == 1, what="restarts == 1")
        wait_for(
            lambda: (
                len(p := jobs.pods("hwnpu")) == 2
                and not {x.metadata.uid for x in p} & {x.metadata.uid for x in first}
                and jobs.status("hwnpu").get("rankTable", {}).get("status") == "completed"
            ),
            what="the replacement pods and their table",
        )
        pods = jobs.pods("hwnpu")
        # Each replacement carries the index of the pod it replaces, and the table follows it.
        assert [p.metadata.annotations[ranktable.RANK_INDEX_ANNOTATION] for p in pods] == [
            "0",
            "1",
        ]
        table, _ = _table(core_v1, jobs.namespace, "hwnpu")
        ids = {s["server_id"]: s["device"][0]["rank_id"] for s in table["server_list"]}
        assert ids == {pods[0].metadata.uid: "0", pods[1].metadata.uid: "1"}

        # Something moves a pod's index: the table is withdrawn, the condition says why.
        _patch_annotations(core_v1, pods[0], {ranktable.RANK_INDEX_ANNOTATION: "1"})
        cond = _ready_reason(jobs, "hwnpu", "InvalidRankIndex")
        assert cond["status"] == "False" and "carries hccl/rankIndex 1" in cond["message"]
        assert _table(core_v1, jobs.namespace, "hwnpu")[0] == {"status": "initializing"}
        _patch_annotations(core_v1, pods[0], {ranktable.RANK_INDEX_ANNOTATION: "0"})

        # A chip without a RoCE address ("-1"): no table, and the condition names the pod.
        note = json.loads(pods[1].metadata.annotations[ranktable.NPU_ANNOTATION])
        note["devices"][0]["device_ip"] = "-1"
        _patch_annotations(core_v1, pods[1], {ranktable.NPU_ANNOTATION: json.dumps(note)})
        cond = _ready_reason(jobs, "hwnpu", "InvalidDeviceAnnotation")
        assert f"of pod {pods[1].metadata.name}: devices[0].device_ip" in cond["message"]
        assert "no RoCE address configured" in cond["message"]

        for pod in pods:
            agent.finish(pod, exit_code=0)
        jobs.wait_phase("hwnpu", "Succeeded")


def test_a_super_pod_job_gets_a_v12_table_once_the_plugin_reports_super_pods(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs, core_v1: client.CoreV1Api
) -> None:
    node_agent.add_node(npus=4)
    policy = {ranktable.SCHEDULE_POLICY_ANNOTATION: "chip2-node16-sp"}
    jobs.create(job_manifest("a3", count=2, metadata={"annotations": policy}))
    # The simulated plugin reports no super-pod ids: a v1.0-only plugin on an A3 job.
    cond = _ready_reason(jobs, "a3", "InvalidDeviceAnnotation")
    assert "a v1.2 (super-pod) table needs it" in cond["message"]
    for rank, pod in enumerate(jobs.pods("a3")):
        note = json.loads(pod.metadata.annotations[ASCEND_910_ANNOTATION])
        note["super_pod_id"] = 5
        note["devices"][0]["super_device_id"] = str(rank)
        _patch_annotations(core_v1, pod, {ASCEND_910_ANNOTATION: json.dumps(note)})
    _ready_reason(jobs, "a3", "RankTableWritten")
    table, _ = _table(core_v1, jobs.namespace, "a3")
    assert table["version"] == "1.2"
    uids = [p.metadata.uid for p in jobs.pods("a3")]
    assert table["super_pod_list"] == [
        {"super_pod_id": "5", "server_list": [{"server_id": u} for u in uids]}
    ]
    for rank in range(2):
        ranktable.validate_rank_table(table, rank, 2)
