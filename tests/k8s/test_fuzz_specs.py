"""Fuzzed job specs against the REAL API server, with the operator running as its own process.

A seeded sample of the mutations the unit tier runs (tests/helpers/spec_mutations.py), JSON-safe
(no NaN), applied as users apply them. Each is refused by the API server's schema, or ends
InvalidSpec (the operator's own checks name the field; a child the API server refuses names
it in the server's words), or is accepted and reaches a condition. Throughout: the operator
stays up, a job it found invalid never has a pod, and no job is left without a condition.
The outcome counts are in docs/reliability.md.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from helpers.spec_mutations import Case, cases, finite
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from sim.node_agent import wait_for

from k8s.operator_harness import Jobs, OperatorProcess, job_manifest
from k8s.volcano import podgroup_api

SAMPLE = 200
BATCH = 20
# Every job settles (a condition) well within this, even with the operator busy with a
# batch of refused pods and their backoff on a loaded 2-core machine.
SETTLE_S = 180


def _sample() -> list[Case]:
    drawn: list[Case] = []

    @settings(
        max_examples=SAMPLE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(json_safe=True))
    def draw(case: Case) -> None:
        if finite(case.manifest):
            drawn.append(case)

    draw()
    return drawn


def _named(case: Case, index: int) -> dict[str, Any]:
    """Each job its own name, unless the mutation is about the name."""
    manifest = dict(case.manifest)
    if not any(m.path[:2] == ("metadata", "name") for m in case.mutations):
        meta = manifest.get("metadata")
        manifest["metadata"] = {**(meta if isinstance(meta, dict) else {}), "name": f"fz{index}"}
    return manifest


def _settled(jobs: Jobs, name: str) -> dict[str, Any] | None:
    status = jobs.status(name)
    conditions = status.get("conditions") or []
    return status if conditions else None


def _owned_pods(jobs: Jobs, name: str) -> list[str]:
    """Pods the job owns, by owner reference (its name need not be a valid label value)."""
    return [
        p.metadata.name
        for p in jobs.core.list_namespaced_pod(jobs.namespace).items
        if any(ref.name == name for ref in p.metadata.owner_references or [])
    ]


def _outcome(jobs: Jobs, name: str, status: dict[str, Any]) -> str:
    failed = jobs.condition(name, "Failed")
    if jobs.condition(name, "Created").get("reason") == "PodsRefused":
        return "waiting: a pod refused by admission"
    if failed.get("reason") != "InvalidSpec":
        return "accepted"
    message = str(failed.get("message"))
    if " rejected " in message:
        return "child refused (API server or client)"
    assert message.startswith(("spec.", "metadata.name: ")), message
    assert _owned_pods(jobs, name) == [], f"pods of invalid job {name}"
    return "InvalidSpec"


def test_fuzzed_specs_on_the_api_server(
    k8s_api: client.ApiClient, operator: OperatorProcess, jobs: Jobs
) -> None:
    sample = _sample()
    assert len(sample) >= SAMPLE * 0.9, len(sample)
    outcomes: collections.Counter[str] = collections.Counter()
    with podgroup_api(k8s_api):
        for start in range(0, len(sample), BATCH):
            created: dict[str, Case] = {}
            for index in range(start, min(start + BATCH, len(sample))):
                case = sample[index]
                manifest = _named(case, index)
                try:
                    body = jobs.create(manifest)
                except client.ApiException as exc:
                    # 1.20 answers an object without apiVersion or kind with a 500.
                    odd = exc.status == 500 and "is missing in" in str(exc.body)
                    assert exc.status in (400, 409, 422) or odd, (case.describe(), exc.body)
                    outcomes["already exists" if exc.status == 409 else "refused by schema"] += 1
                    continue
                except ValueError:  # the client's own model refuses it before sending
                    outcomes["refused by the client"] += 1
                    continue
                created[body["metadata"]["name"]] = case
            deadline = time.monotonic() + SETTLE_S
            waiting = dict(created)
            while waiting:
                for name in list(waiting):
                    status = _settled(jobs, name)
                    if status is not None:
                        outcomes[_outcome(jobs, name, status)] += 1
                        del waiting[name]
                assert time.monotonic() < deadline, {
                    n: c.describe() for n, c in waiting.items()
                }  # a job left without a condition
                time.sleep(0.3)
            assert operator.proc is not None and operator.proc.poll() is None, "operator died"
            for name in created:
                jobs.delete(name)
    assert operator.proc is not None and operator.proc.poll() is None, "operator died"
    assert "Traceback" not in operator.log_path.read_text()
    print(f"fuzzed specs on the API server: {dict(outcomes)}")


def test_a_volume_the_client_refuses_fails_the_job_naming_the_field(
    operator: OperatorProcess, jobs: Jobs
) -> None:
    # Volume sources are embedded objects the CRD keeps as written; the Kubernetes client
    # checks the pod's types before sending it. Found by the fuzzed specs above: the job
    # was retried forever, without a condition.
    manifest = job_manifest("badvolume", device="cpu", count=2)
    manifest["spec"]["data"] = {
        "volume": {"persistentVolumeClaim": {"claimName": "data", "readOnly": "yes"}},
        "path": "/data",
    }
    jobs.create(manifest)
    jobs.wait_phase("badvolume", "Failed")
    failed = jobs.condition("badvolume", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "persistentVolumeClaim.readOnly" in failed["message"], failed["message"]
    assert jobs.status("badvolume")["restarts"] == 0
    wait_for(lambda: jobs.pods("badvolume") == [], what="no pods left")


def test_a_pod_the_api_server_cannot_decode_fails_the_job(
    operator: OperatorProcess, jobs: Jobs
) -> None:
    # A quantity that does not parse makes the pod's body undecodable: the API server
    # answers 400, not 422. Found by the fuzzed specs above: the job was retried forever,
    # without a condition.
    manifest = job_manifest("badsize", device="cpu", count=2)
    manifest["spec"]["data"] = {"volume": {"emptyDir": {"sizeLimit": "lots"}}, "path": "/data"}
    jobs.create(manifest)
    jobs.wait_phase("badsize", "Failed")
    failed = jobs.condition("badsize", "Failed")
    assert failed["reason"] == "InvalidSpec" and "rejected by the API server" in failed["message"]
    assert jobs.status("badsize")["restarts"] == 0


def test_a_name_too_long_for_a_label_fails_the_job_naming_the_field(
    operator: OperatorProcess, jobs: Jobs
) -> None:
    # The API server takes object names up to 253 characters, but the job's name is the
    # value of its pods' label, at most 63. Found by the fuzzed specs above: listing the pods
    # by that label was refused (400) and the job was retried forever, without a condition.
    name = "x" * 64
    jobs.create(job_manifest(name, device="cpu", count=2))
    jobs.wait_phase(name, "Failed")
    failed = jobs.condition(name, "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["message"].startswith("metadata.name: ")


def test_a_pod_admission_refuses_leaves_the_job_waiting_with_a_condition(
    operator: OperatorProcess, jobs: Jobs
) -> None:
    # Found by the fuzzed specs above: a PriorityClass that does not exist makes admission
    # refuse every pod (403), and the job was retried without a condition saying so.
    manifest = job_manifest("nopriority", device="cpu", count=2)
    manifest["spec"]["scheduling"]["priorityClassName"] = "no-such-class"
    jobs.create(manifest)
    created = wait_for(
        lambda: (c := jobs.condition("nopriority", "Created")).get("reason") == "PodsRefused" and c,
        what="the Created condition",
    )
    assert created["status"] == "False" and "no-such-class" in created["message"]
    assert jobs.status("nopriority")["phase"] == "Pending"
