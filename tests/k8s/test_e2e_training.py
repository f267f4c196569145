"""End to end: a ShuffleNetTrainingJob trains for real through the operator.

Real: the control plane (apiserver, scheduler, garbage collector), the operator process, the
trainer processes (`shufflenet-train` as the rank pods' containers run it), torch.distributed
(gloo) between them, their Prometheus exporters, the checkpoints on a hostPath volume.
SIMULATED (tests/sim): kubelet, whose container runtime runs each pod's command as a local
process with the pod's environment, and the pod network (pod IPs 127.2.N.M, cluster DNS of
the rank-0 name). This is the operator's promise in one run: pods that train, progress in
the job's status, a killed rank restarting the whole job from its last checkpoint, success.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from kubernetes import client
from sim.node_agent import NodeAgent, wait_for
from sim.runtime import ProcessRuntime

from k8s.cluster import ControlPlane
from k8s.operator_harness import Jobs, OperatorProcess, free_port, install_crd, job_manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def running_nodes(core_v1: client.CoreV1Api, tmp_path: Path) -> Iterator[NodeAgent]:
    agent = NodeAgent(core_v1, name=f"e2e{uuid.uuid4().hex[:6]}")
    agent.runtime = ProcessRuntime(tmp_path / "containers", agent.pod_ip)
    with agent:
        agent.add_node(npus=0)
        yield agent


@pytest.fixture
def operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator of these tests, with the job policy `privileged`: the simulated runtime
    runs rank pods as local processes and mounts only hostPath volumes (tests/sim/runtime.py),
    which the default policy refuses. An admin trusting every job author sets the same."""
    install_crd(control_plane.api)
    op = OperatorProcess(control_plane, namespace, tmp_path, args=["--job-policy", "privileged"])
    op.start()
    try:
        yield op
    finally:
        op.stop()


def container_logs(tmp_path: Path, pod: str) -> str:
    """What the containers of every pod named `pod` (all attempts) wrote."""
    return "".join(p.read_text() for p in sorted((tmp_path / "containers").glob(f"{pod}-*.log")))


def tiny_job(name: str, checkpoints: Path, *, epochs: int, **devices: int) -> dict:
    """A CPU job of a few seconds an epoch on 2 cores: x0.5 at 32 px on synthetic data, 6
    steps an epoch, checkpoints on a hostPath volume."""
    checkpoints.mkdir()
    return job_manifest(
        name,
        device="cpu",
        devices={"type": "cpu", **devices},
        training={
            "epochs": epochs,
            "batchSize": 8,
            "imageSize": 32,
            "valResize": 32,
            "workers": 0,
            "printFreq": 1,
            "warmupEpochs": 0,
            "distTimeoutSeconds": 60,
            "extraArgs": ["--max-steps-per-epoch", "6"],
        },
        checkpoint={
            "volume": {"hostPath": {"path": str(checkpoints), "type": "Directory"}},
            "path": str(checkpoints),
        },
        metrics={"port": free_port()},
    )


def test_cpu_job_trains_survives_a_killed_rank_and_succeeds(
    running_nodes: NodeAgent,
    operator: OperatorProcess,
    jobs: Jobs,
    namespace: str,
    tmp_path: Path,
) -> None:
    checkpoints = tmp_path / "checkpoints"
    jobs.create(tiny_job("e2e", checkpoints, epochs=3, count=2))
    run = checkpoints / namespace / "e2e"  # the job's own run folder on the volume
    jobs.wait_phase("e2e", "Running", timeout=120)

    # Progress comes from rank 0's own exporter while the ranks train.
    wait_for(
        lambda: "epoch" in (jobs.status("e2e").get("progress") or {}),
        timeout=180,
        what="status.progress scraped from rank 0",
    )
    # Once epoch 1 is checkpointed, rank 1 dies (SIGKILL: exit 137, as an OOM kill).
    wait_for(
        lambda: list(run.glob("training_2p_job_*/checkpoint.pth.tar")),
        timeout=300,
        what="the first checkpoint",
    )
    rank1 = jobs.pods("e2e")[1]
    assert running_nodes.runtime is not None
    running_nodes.runtime.kill(rank1.metadata.uid)

    wait_for(lambda: jobs.status("e2e").get("restarts") == 1, timeout=60, what="a restart")
    # The Restarting condition may already be over (0.5 s backoff here): its Event stays.
    (event,) = wait_for(
        lambda: [e for e in jobs.events("e2e") if e.reason == "RetryableExit"],
        what="the restart's Event",
    )
    assert event.message.startswith("rank 1 pod e2e-rank-1 exited 137"), event.message
    status = jobs.wait_phase("e2e", "Succeeded", timeout=400)
    assert status["restarts"] == 1
    # The last scrape may come before the very end; accuracy is there since epoch 1.
    assert status["progress"]["epoch"] > 1 and "top1" in status["progress"]

    # The second attempt went on from the checkpoint instead of starting over.
    saved = run.glob("training_2p_job_*/checkpoint.pth.tar")
    newest = max(saved, key=lambda p: p.stat().st_mtime)
    state = torch.load(newest, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3
    logs = container_logs(tmp_path, "e2e-rank-0")
    assert "=> --resume auto: found" in logs, logs[-3000:]


def test_pods_of_two_devices_each_run_a_four_rank_job(
    running_nodes: NodeAgent,
    operator: OperatorProcess,
    jobs: Jobs,
    namespace: str,
    tmp_path: Path,
) -> None:
    checkpoints = tmp_path / "checkpoints"
    jobs.create(tiny_job("pairs", checkpoints, epochs=1, count=4, perPod=2))
    status = jobs.wait_phase("pairs", "Succeeded", timeout=400)
    assert status["restarts"] == 0 and status["ranks"]["succeeded"] == 4
    # Each pod's launcher started its two ranks of the one 4-rank job.
    logs = {name: container_logs(tmp_path, name) for name in ("pairs-node-0", "pairs-node-1")}
    assert "starting ranks 0..1 of 4" in logs["pairs-node-0"], logs["pairs-node-0"][-2000:]
    assert "starting ranks 2..3 of 4" in logs["pairs-node-1"], logs["pairs-node-1"][-2000:]
    (result,) = (checkpoints / namespace / "pairs").glob("training_4p_job_*")
    state = torch.load(result / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1


def _files(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_jobs_sharing_a_checkpoint_volume_keep_their_own_runs(
    running_nodes: NodeAgent,
    operator: OperatorProcess,
    jobs: Jobs,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Two jobs on one checkpoint volume: the second starts at epoch 0 and leaves the first's
    run alone; the first, deleted and applied again, continues its own run."""
    checkpoints = tmp_path / "checkpoints"
    first = tiny_job("first", checkpoints, epochs=1, count=2)
    jobs.create(first)
    jobs.wait_phase("first", "Succeeded", timeout=400)
    first_run = checkpoints / namespace / "first"
    before = _files(first_run)
    assert any(p.name == "checkpoint.pth.tar" for p in before)

    second = copy.deepcopy(first)
    second["metadata"]["name"] = "second"
    jobs.create(second)
    jobs.wait_phase("second", "Succeeded", timeout=400)
    assert "starting fresh" in container_logs(tmp_path, "second-rank-0")
    (saved,) = (checkpoints / namespace / "second").glob("training_2p_job_*/checkpoint.pth.tar")
    assert torch.load(saved, map_location="cpu", weights_only=True)["epoch"] == 1
    assert _files(first_run) == before

    # Re-applied with one more epoch, the first job goes on from its own checkpoint.
    jobs.delete("first")
    wait_for(lambda: jobs.gone("first"), timeout=60, what="the first job deleted")
    again = copy.deepcopy(first)
    again["spec"]["training"]["epochs"] = 2
    jobs.create(again)
    jobs.wait_phase("first", "Succeeded", timeout=400)
    assert "=> --resume auto: found" in container_logs(tmp_path, "first-rank-0")
    newest = max(
        first_run.glob("training_2p_job_*/checkpoint.pth.tar"), key=lambda p: p.stat().st_mtime
    )
    assert torch.load(newest, map_location="cpu", weights_only=True)["epoch"] == 2
