"""Which scheduler a job's rank pods get, against the REAL API server and kube-scheduler, with
the SIMULATED kubelet (tests/sim) playing the node.

There is no Volcano here: a job without gang scheduling that names no scheduler must still
run, its pods bound by the cluster's own scheduler. The CRD gives schedulerName no default,
so the API server stores the job as written and the operator picks the scheduler.
"""

from __future__ import annotations

from sim.node_agent import NodeAgent

from k8s.operator_harness import Jobs, OperatorProcess, job_manifest
from shufflenet_contract import job as contract


def test_a_job_without_gang_and_without_a_scheduler_name_runs_on_the_default_scheduler(
    node_agent: NodeAgent, operator: OperatorProcess, jobs: Jobs
) -> None:
    node_agent.add_node(npus=0)
    created = jobs.create(job_manifest("plain", device="cpu", count=2, scheduling={"gang": False}))
    assert "schedulerName" not in created["spec"]["scheduling"]  # not defaulted to volcano

    status = jobs.wait_phase("plain", "Running")  # bound by kube-scheduler, on the node
    assert status["ranks"]["scheduled"] == 2 and status["ranks"]["running"] == 2
    pods = jobs.pods("plain")
    assert [p.spec.scheduler_name for p in pods] == [contract.DEFAULT_SCHEDULER] * 2
    assert all(p.spec.node_name and p.status.phase == "Running" for p in pods)

    # Ended, the job shows the epoch it trained to, not the last scrape (none here).
    for pod in pods:
        node_agent.finish(pod, exit_code=0)
    assert jobs.wait_phase("plain", "Succeeded")["progress"] == {"epoch": 1}
