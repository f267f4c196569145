"""Jobs on a REAL node: the kubelet, containerd and runc run the images built here.

What users meet first, which the simulated node cannot show: the images themselves, the
example job as shipped (no podTemplate; its claims bound to PersistentVolumes, as an admin
makes them) in pods that pass Pod Security "restricted", run as the image's user on a
read-only root filesystem, the rank table arriving through a real
ConfigMap mount (symlinks into `..data/`, updated by the kubelet's sync), SIGTERM and exit
codes from the runtime, pod-to-pod networking and cluster DNS. tests/k8s/real_node.py says
what is real and what is simulated (only the Ascend chips).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from integration.pod_security_tools import check_restricted
from kubernetes import client, watch
from sim.node_agent import wait_for

from k8s.cluster import REPO, start_control_plane, stop_control_plane
from k8s.operator_harness import Jobs, new_namespace
from k8s.real_node import (
    OPERATOR_NAMESPACE,
    RealNode,
    claim_volumes,
    helm_install_operator,
    local_job,
    pinned,
    push_images,
    start_device_plugin,
)
from shufflenet_contract import ranktable

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "manifests" / "examples" / "cpu-digits-2rank.yaml"
TRAINER_UID = 10001


@pytest.fixture(scope="module")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    state = tmp_path_factory.mktemp("node") / "cluster"
    cp = start_control_plane(state, node=True)
    plugins = []
    try:
        images = push_images(cp)
        for resource in ranktable.DEVICE_ANNOTATIONS:
            plugins.append(start_device_plugin(cp, resource))
        node = RealNode(cp, images, plugins)
        # Quick restarts and progress scrapes, so the tests do not wait on production pacing.
        helm_install_operator(
            node, "--set", "operator.restartBackoff=1", "--set", "operator.progressInterval=3"
        )
        yield node
    finally:
        for plugin in plugins:
            plugin.stop()
        cp.api.close()
        stop_control_plane(state)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's handwritten digits as an ImageFolder (what `make demo` trains on)."""
    root = tmp_path_factory.mktemp("digits") / "digits"
    subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.data.prep.demo_data", str(root)],
        check=True,
        timeout=300,
    )
    return root


@pytest.fixture
def jobs(real_node: RealNode) -> Iterator[Jobs]:
    core = client.CoreV1Api(real_node.cp.api)
    name = new_namespace(core)
    yield Jobs(real_node.cp.api, name)
    core.delete_namespace(name)


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    # The checkpoint volume's directory: hostPath volumes get no fsGroup, so it is made
    # writable by the image's user, as the admin of such a volume would (the demo does too).
    path = tmp_path / "checkpoints"
    path.mkdir()
    os.chown(path, TRAINER_UID, TRAINER_UID)
    return path


@pytest.fixture
def claims(jobs: Jobs, digits: Path, checkpoints: Path) -> Iterator[None]:
    """The example's claims (`digits`, `shufflenet-checkpoints`) in the test's namespace,
    bound to hostPath PersistentVolumes of the digits and of `checkpoints`, as in the demo."""
    example = yaml.safe_load(EXAMPLE.read_text())
    objects = claim_volumes(example, data=digits, checkpoints=checkpoints, namespace=jobs.namespace)
    volumes = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolume"]
    for obj in objects:
        if obj["kind"] == "PersistentVolume":
            jobs.core.create_persistent_volume(obj)
        else:
            jobs.core.create_namespaced_persistent_volume_claim(jobs.namespace, obj)
    yield
    # Cluster-wide, unlike the claims: they go when their claims do, with the namespace.
    for name in volumes:
        jobs.core.delete_persistent_volume(name)


def digits_job(node: RealNode, name: str, **overrides: Any) -> dict:
    """The example as the demo applies it, no image (the operator's default, from the
    registry): only the name and the overrides differ (2 epochs unless they say otherwise)."""
    example = yaml.safe_load(EXAMPLE.read_text())
    return local_job(example, name=name, overrides={"training.epochs": 2, **overrides})


def run_folder(jobs: Jobs, checkpoints: Path, name: str) -> Path:
    """The job's run folder on the checkpoint volume: <namespace>/<name>."""
    return checkpoints / jobs.namespace / name


def pod_logs(jobs: Jobs, pod: str) -> str:
    return jobs.core.read_namespaced_pod_log(pod, jobs.namespace, container="trainer")


def test_digits_job_succeeds_in_real_pods_from_the_images(
    real_node: RealNode, jobs: Jobs, claims: None, checkpoints: Path, tmp_path: Path
) -> None:
    job = digits_job(real_node, "digits")
    assert "podTemplate" not in job["spec"]  # the operator's own pods, nothing loosened
    jobs.create(job)
    status = jobs.wait_phase("digits", "Succeeded", timeout=600)
    assert status["ranks"]["succeeded"] == 2 and status["restarts"] == 0
    # The operator's pod scraped rank 0's exporter across the pod network.
    assert status["progress"]["epoch"] >= 1, status

    # The result folder and the checkpoint are in the job's run folder on the volume,
    # written by the image's user (the pods name none: the image's USER ran them).
    (result,) = run_folder(jobs, checkpoints, "digits").glob("training_2p_job_*")
    ckpt = result / "checkpoint.pth.tar"
    assert ckpt.stat().st_uid == TRAINER_UID
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 2
    assert any(result.glob("*.png")), sorted(p.name for p in result.iterdir())

    # The pods as the API server admitted them pass Pod Security "restricted" (checkov),
    # and yet they trained: read-only root filesystem, HOME and the caches of torch and
    # matplotlib on the pod's /tmp, the data and checkpoints through the claims.
    pods = jobs.pods("digits")
    manifests = [
        {"apiVersion": "v1", "kind": "Pod", **jobs.core.api_client.sanitize_for_serialization(p)}
        for p in pods
    ]
    report = check_restricted(manifests, tmp_path / "pods")
    assert report.workloads == 2 and not report.findings, (str(report), report.findings)
    for pod in pods:
        (c,) = [c for c in pod.spec.containers if c.name == "trainer"]
        assert c.security_context.read_only_root_filesystem is True
        # The chart's cpu trainer image, pinned by digest, pulled from the registry.
        assert c.image == pinned(real_node.images, "TRAINER")
        assert pod.status.container_statuses[0].image_id.endswith(
            real_node.images["TRAINER_DIGEST"]
        )
        claimed = {
            v.persistent_volume_claim.claim_name
            for v in pod.spec.volumes
            if v.persistent_volume_claim
        }
        assert claimed == {"digits", "shufflenet-checkpoints"}
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    logs = pod_logs(jobs, "digits-rank-0")
    assert "* Acc@1" in logs, logs[-3000:]

    # The operator ran from its image, under the chart's ServiceAccount (not `default`): its
    # two replicas, the leader and the standby.
    core = client.CoreV1Api(real_node.cp.api)
    ops = core.list_namespaced_pod(OPERATOR_NAMESPACE).items
    assert len(ops) == 2
    for op in ops:
        assert op.spec.containers[0].image == pinned(real_node.images, "OPERATOR")
        assert op.spec.service_account_name not in (None, "", "default")
        assert op.status.phase == "Running"
    # Nothing imported them: containerd holds both under the registry's names, pulled.
    images = real_node.images
    listed = real_node.ctr("images", "ls", "-q").stdout.split()
    for name in ("OPERATOR", "TRAINER"):
        repository = images[f"{name}_IMAGE"].rpartition(":")[0]
        digest = images[f"{name}_DIGEST"]
        assert any(r.startswith(repository) and r.endswith(f"@{digest}") for r in listed), listed


@pytest.mark.parametrize("resource", sorted(ranktable.DEVICE_ANNOTATIONS))
def test_npu_job_hands_hccl_a_regular_copy_of_the_completed_table(
    real_node: RealNode, jobs: Jobs, claims: None, checkpoints: Path, resource: str
) -> None:
    copies = checkpoints / "ranktable"
    job = digits_job(
        real_node, "npu", **{"devices": {"type": "npu", "count": 2, "resourceName": resource}}
    )
    # The test-only override: the ranks train on CPU with gloo but run the whole NPU
    # contract. The copies go on the volume, so they can be read after the pods are gone.
    env = [
        {"name": "SHUFFLENET_FORCE_CPU", "value": "1"},
        {
            "name": "SHUFFLENET_RANK_TABLE_DIR",
            "value": f"{job['spec']['checkpoint']['path']}/ranktable",
        },
    ]
    job["spec"]["podTemplate"] = {"spec": {"containers": [{"name": "trainer", "env": env}]}}
    # No Ascend image on this node: the job names the CPU trainer image from the registry, as
    # a job may name any image (the operator's default for npu jobs is the Ascend one).
    job["spec"]["image"] = pinned(real_node.images, "TRAINER")
    jobs.create(job)
    status = jobs.wait_phase("npu", "Succeeded", timeout=600)
    assert status["rankTable"]["status"] == "completed"

    cm = jobs.core.read_namespaced_config_map("npu-ranktable", jobs.namespace)
    table = json.loads(cm.data[ranktable.FILE_KEY])
    assert table["status"] == "completed"
    pods = jobs.pods("npu")
    # One-device pods: one server entry each, keyed by the pod's UID, with the chip the
    # device plugin gave it through the kubelet (its annotation).
    assert [s["server_id"] for s in table["server_list"]] == [p.metadata.uid for p in pods]
    for rank, pod in enumerate(pods):
        # The key of the resource's device plugin (ascend-910- or ascend-npu-configuration).
        annotation = json.loads(pod.metadata.annotations[ranktable.DEVICE_ANNOTATIONS[resource]])
        assert pod.metadata.annotations[ranktable.RANK_INDEX_ANNOTATION] == str(rank)
        (entry,) = [s for s in table["server_list"] if s["server_id"] == pod.metadata.uid]
        assert [d["device_id"] for d in entry["device"]] == [
            d["device_id"] for d in annotation["devices"]
        ]
        assert entry["device"][0]["rank_id"] == str(rank)

        # What HCCL was handed: a regular file (never the ConfigMap's symlink) holding the
        # completed table of this attempt, copied from the kubelet's atomic-writer mount.
        copy = copies / f"hccl-npu-rank{rank}.json"
        assert copy.lstat().st_mode & 0o170000 == 0o100000, "not a regular file"
        assert json.loads(copy.read_text()) == table
        logs = pod_logs(jobs, pod.metadata.name)
        line = next(x for x in logs.splitlines() if "HCCL gets RANK_TABLE_FILE=" in x)
        in_pod = f"{job['spec']['checkpoint']['path']}/ranktable/{copy.name}"
        assert f"RANK_TABLE_FILE={in_pod} " in line, line
        assert f"{ranktable.MOUNT_DIR}/..20" in line, line  # read through the real mount
        assert f"table version {cm.data[ranktable.VERSION_KEY]}," in line, line


def test_a_killed_rank_restarts_the_whole_job_from_its_checkpoint(
    real_node: RealNode, jobs: Jobs, claims: None, checkpoints: Path
) -> None:
    run = run_folder(jobs, checkpoints, "kill")
    jobs.create(digits_job(real_node, "kill", **{"training.epochs": 4}))
    jobs.wait_phase("kill", "Running", timeout=300)
    wait_for(
        lambda: list(run.glob("training_2p_job_*/checkpoint.pth.tar")),
        timeout=300,
        what="the first checkpoint",
    )
    rank1 = jobs.pods("kill")[1]
    real_node.kill_container(rank1.status.container_statuses[0].container_id)

    wait_for(lambda: jobs.status("kill").get("restarts") == 1, timeout=120, what="a restart")
    (event,) = wait_for(
        lambda: [e for e in jobs.events("kill") if e.reason == "RetryableExit"],
        what="the restart's Event",
    )
    assert event.message.startswith("rank 1 pod kill-rank-1 exited 137"), event.message
    status = jobs.wait_phase("kill", "Succeeded", timeout=600)
    assert status["restarts"] == 1
    newest = max(run.glob("training_2p_job_*/checkpoint.pth.tar"), key=os.path.getmtime)
    assert torch.load(newest, map_location="cpu", weights_only=True)["epoch"] == 4
    # The new pods went on from the checkpoint instead of starting over.
    assert "=> --resume auto: found" in pod_logs(jobs, "kill-rank-0")


def test_a_killed_training_process_restarts_in_place_without_touching_a_pod(
    real_node: RealNode, jobs: Jobs, claims: None, checkpoints: Path
) -> None:
    """Tier 1: the process that trains dies inside its container (its pod's first process,
    the supervisor, lives on); every rank starts its training process again from the
    checkpoint, in the same pods, and the operator restarts nothing."""
    run = run_folder(jobs, checkpoints, "inplace")
    jobs.create(digits_job(real_node, "inplace", **{"training.epochs": 4}))
    jobs.wait_phase("inplace", "Running", timeout=300)
    wait_for(
        lambda: list(run.glob("training_2p_job_*/checkpoint.pth.tar")),
        timeout=300,
        what="the first checkpoint",
    )
    pods = {p.metadata.name: p.metadata.uid for p in jobs.pods("inplace")}
    rank1 = jobs.pods("inplace")[1]
    supervisor = real_node.container_pid(rank1.status.container_statuses[0].container_id)
    (training,) = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    os.kill(int(training), signal.SIGKILL)
    killed = time.monotonic()
    records = wait_for(
        lambda: list(run.glob("training_2p_job_*/recovery.jsonl")),
        timeout=180,
        interval=0.2,
        what="the recovery's first step",
    )
    with_first_step = time.monotonic() - killed
    status = jobs.wait_phase("inplace", "Succeeded", timeout=600)
    assert status["restarts"] == 0, status
    assert {p.metadata.name: p.metadata.uid for p in jobs.pods("inplace")} == pods
    for pod in jobs.pods("inplace"):
        assert pod.status.container_statuses[0].restart_count == 0
    (record,) = [json.loads(line) for line in records[0].read_text().splitlines()]
    assert record["generation"] == 1 and record["cause"] == "rank 1: exit 137 (SIGKILL)"
    assert "generation 1 met" in pod_logs(jobs, "inplace-rank-0")
    print(
        f"\nreal node: rank 1's training process SIGKILLed -> first step of generation 1 "
        f"after {with_first_step:.1f}s (record: {record})"
    )


class _LastStates:
    """The last container state of every pod of a job, from a watch (a deleted pod's final
    status is visible only for a moment). A watch the server ends is resumed."""

    def __init__(self, jobs: Jobs, name: str) -> None:
        self.states: dict[str, Any] = {}
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, args=(jobs, name), daemon=True)
        self._thread.start()

    def _run(self, jobs: Jobs, name: str) -> None:
        selector = f"training.shufflenet.io/job-name={name}"
        version = jobs.core.list_namespaced_pod(
            jobs.namespace, label_selector=selector
        ).metadata.resource_version
        while not self._stop.is_set():
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    jobs.core.list_namespaced_pod,
                    jobs.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=30,
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    for cs in pod.status.container_statuses or []:
                        self.states[pod.metadata.name] = cs.state
            except Exception:  # the stream broke: resume from the last version seen
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=40)


def test_deleting_the_job_stops_every_rank_with_sigterm_after_a_checkpoint(
    real_node: RealNode, jobs: Jobs, claims: None, checkpoints: Path
) -> None:
    run = run_folder(jobs, checkpoints, "del")
    jobs.create(digits_job(real_node, "del", **{"training.epochs": 50}))
    wait_for(
        lambda: list(run.glob("training_2p_job_*/checkpoint.pth.tar")),
        timeout=300,
        what="the first checkpoint",
    )
    (ckpt,) = run.glob("training_2p_job_*/checkpoint.pth.tar")
    status = jobs.status("del")
    assert status["phase"] == "Running" and status["restarts"] == 0, status
    states = _LastStates(jobs, "del")
    time.sleep(1)
    deleted_at = time.time()
    jobs.delete("del")
    # The garbage collector deletes the pods; the kubelet sends SIGTERM (grace period 30 s).
    wait_for(lambda: not jobs.pods("del"), timeout=120, what="the pods gone")
    states.stop()
    exits = {
        pod: state.terminated.exit_code for pod, state in states.states.items() if state.terminated
    }
    assert exits == {"del-rank-0": 143, "del-rank-1": 143}, states.states
    # The ranks agreed to stop and saved the job's checkpoint after the signal.
    assert ckpt.stat().st_mtime > deleted_at
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] < 50


# --- the operator's replicas: leader election with the kubelet's real pod lifecycle --------

# The chart's Lease: the release's full name, in its namespace; client-go's durations.
OPERATOR_LEASE = "shufflenet-shufflenet-operator"
LEASE_S, RETRY_S = 15.0, 2.0


def lease_holder(node: RealNode) -> str:
    """The leader's identity (its pod's name, '_', a random suffix); empty: none."""
    api = client.CoordinationV1Api(node.cp.api)
    try:
        spec = api.read_namespaced_lease(OPERATOR_LEASE, OPERATOR_NAMESPACE).spec
    except client.ApiException as e:
        if e.status == 404:
            return ""
        raise
    return spec.holder_identity or ""


def operator_pods(node: RealNode) -> list[client.V1Pod]:
    core = client.CoreV1Api(node.cp.api)
    return [
        p
        for p in core.list_namespaced_pod(OPERATOR_NAMESPACE).items
        if p.metadata.deletion_timestamp is None
    ]


def failover(node: RealNode, jobs: Jobs, name: str, kill: Any) -> tuple[float, float, str]:
    """Kill the leader with `kill(pod)`, apply a job at once; the seconds until another
    identity holds the Lease and until the job has its rank pods, and the new leader."""
    before = wait_for(lambda: lease_holder(node), timeout=60, what="a leader")
    pod = before.rpartition("_")[0]
    (leader,) = [p for p in operator_pods(node) if p.metadata.name == pod]
    killed = time.monotonic()
    kill(leader)
    # Pending forever (no node has the label): its pods are the operator's doing alone.
    job = digits_job(node, name, **{"scheduling.nodeSelector": {"shufflenet.io/nowhere": "x"}})
    jobs.create(job)
    after = wait_for(
        lambda: (h := lease_holder(node)) not in ("", before) and h,
        timeout=120,
        what="a new leader",
    )
    took_over = time.monotonic() - killed
    wait_for(lambda: len(jobs.pods(name)) == 2, timeout=120, what="the job's rank pods")
    reconciled = time.monotonic() - killed
    assert jobs.status(name).get("phase"), jobs.status(name)
    return took_over, reconciled, after


def test_operator_replicas_fail_over_when_the_leader_is_killed_or_deleted(
    real_node: RealNode, jobs: Jobs
) -> None:
    wait_for(
        lambda: len([p for p in operator_pods(real_node) if p.status.phase == "Running"]) == 2,
        timeout=120,
        what="two operator pods running",
    )
    kubectl = real_node.cp.kubectl
    results = {}

    def sigkill(pod: client.V1Pod) -> None:
        # Its process killed hard (as by the OOM killer, or a node gone): no release, so
        # the Lease must expire; the kubelet restarts the container as a standby.
        real_node.kill_container(pod.status.container_statuses[0].container_id)

    def delete(pod: client.V1Pod) -> None:
        # A rollout, a drain, an admin: the kubelet sends SIGTERM, the leader releases.
        kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, pod.metadata.name, "--wait=false")

    def force_delete(pod: client.V1Pod) -> None:
        kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, pod.metadata.name,
                "--grace-period=0", "--force", "--wait=false")  # fmt: skip

    for name, kill in (("kill", sigkill), ("delete", delete), ("force", force_delete)):
        results[name] = failover(real_node, jobs, f"ha-{name}", kill)
        print(
            f"\noperator failover ({name}): the Lease taken after {results[name][0]:.1f}s, "
            f"a job applied after the kill reconciled after {results[name][1]:.1f}s "
            f"(new leader {results[name][2]})"
        )
        wait_for(
            lambda: len([p for p in operator_pods(real_node) if p.status.phase == "Running"]) == 2,
            timeout=120,
            what="the Deployment back to two running pods",
        )
    # Killed: the standby waits out the Lease it last saw renewed; the bound is the lease
    # plus two retry periods (it saw the renewal up to one late, and tries every one).
    assert LEASE_S - RETRY_S <= results["kill"][1] <= LEASE_S + 2 * RETRY_S + 5
    # Deleted: the released Lease is taken at the standby's next try.
    assert results["delete"][1] <= 2 * RETRY_S + 5


# An image on an address where nothing listens: the node's containerd is refused at once, so
# the kubelet posts ErrImagePull within a second of trying (no registry timeout to wait out).
UNPULLABLE = "127.0.0.1:1/shufflenet/not-there:1"


def _first_pull_error(jobs: Jobs, name: str, seen: dict[str, float]) -> Callable[[], None]:
    """Watch the job's pods; note when the kubelet's ErrImagePull first arrives. Returns
    what stops the watch."""
    w = watch.Watch()
    stopped = threading.Event()

    def run() -> None:
        try:
            for event in w.stream(
                jobs.core.list_namespaced_pod,
                jobs.namespace,
                label_selector=f"training.shufflenet.io/job-name={name}",
                timeout_seconds=120,
            ):
                for cs in event["object"].status.container_statuses or []:
                    if cs.state.waiting and cs.state.waiting.reason == "ErrImagePull":
                        seen.setdefault("pod", time.monotonic())
        except Exception:
            if not stopped.is_set():  # stopping cuts the stream short
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        w.stop()
        thread.join(timeout=10)

    return stop


def test_an_image_that_cannot_be_pulled_shows_on_the_job_then_the_start_timeout_fails_it(
    real_node: RealNode, jobs: Jobs, claims: None, capsys: pytest.CaptureFixture[str]
) -> None:
    job = digits_job(real_node, "nopull", **{"runPolicy.startTimeoutSeconds": 60})
    # A user's job naming an image the node cannot pull.
    job["spec"].update(image=UNPULLABLE, imagePullPolicy="IfNotPresent")
    seen: dict[str, float] = {}
    stop_watch = _first_pull_error(jobs, "nopull", seen)
    jobs.create(job)

    def job_shows_it() -> dict[str, Any] | None:
        status = jobs.status("nopull")
        if (status.get("waiting") or {}).get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            seen.setdefault("job", time.monotonic())
            return status
        return None

    status = wait_for(job_shows_it, timeout=120, interval=0.05, what="the job's Waiting reason")
    stop_watch()
    assert "pod" in seen, "the kubelet's ErrImagePull was not seen on the pod"
    lag = seen["job"] - seen["pod"]
    with capsys.disabled():
        print(f"\nkubelet posted ErrImagePull -> the job's status showed it: {lag:.2f}s")
    assert lag < 5, lag
    # Whichever rank's pull failed first (the kubelet pulls for both pods at once).
    message = status["waiting"]["message"]
    assert re.match(r"rank (\d) pod nopull-rank-\1 container trainer: ", message), message
    assert "127.0.0.1:1" in message
    running = jobs.condition("nopull", "Running")
    assert running["status"] == "False"
    assert running["reason"] in ("ErrImagePull", "ImagePullBackOff"), running
    (event,) = wait_for(
        lambda: [e for e in jobs.events("nopull") if e.reason == "ErrImagePull"],
        what="the job's ErrImagePull Event",
    )
    assert event.type == "Warning"

    # The start timeout: Failed, naming the field and the kubelet's reason; pods removed.
    failed = jobs.wait_phase("nopull", "Failed", timeout=120)
    (cond,) = [c for c in failed["conditions"] if c["type"] == "Failed"]
    assert cond["reason"] == "StartTimeoutExceeded"
    assert cond["message"].startswith("spec.runPolicy.startTimeoutSeconds: 0 of 2 ranks"), cond
    assert "ImagePull" in cond["message"]
    wait_for(lambda: not jobs.pods("nopull"), timeout=120, what="the rank pods removed")
