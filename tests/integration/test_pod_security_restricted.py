"""Every pod the operator renders for the shipped examples, and every object of the chart,
pass Pod Security "restricted" as an independent checker (checkov) judges it: which of its
checks stand for which rule, and the rules it lacks, are in integration/pod_security_tools.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.jobs import TRAINER_IMAGES
from integration.metrics_tools import ROOT, helm_template
from integration.pod_security_tools import check_restricted, resource_id

from shufflenet_contract import job as jobs
from shufflenet_operator import render, trainer_images

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
# The one object that talks to the API server: the operator keeps its token mounted.
API_CLIENTS = {"Deployment.shufflenet-system.shufflenet-operator": {"CKV_K8S_38"}}
# What loosened() breaks, as the findings name it.
LOOSENED = {
    "CKV_K8S_16",  # privileged
    "CKV_K8S_19",  # hostNetwork
    "CKV_K8S_20",  # allowPrivilegeEscalation
    "CKV_K8S_23",  # runAsNonRoot false, runAsUser 0
    "CKV_K8S_25",  # capabilities added
    "CKV_K8S_38",  # the token mounted
    "volume host: hostPath",
    "pod: runAsUser 0",
}


def example_pods() -> list[dict[str, Any]]:
    """Every pod of every example, as the operator renders it (each example in a namespace
    of its own, so that the names stay unique)."""
    pods = []
    for path in EXAMPLES:
        manifest = yaml.safe_load(path.read_text())
        manifest["metadata"].update(namespace=path.stem, uid=f"uid-{path.stem}")
        # No image: the chart's default trainer image for the device type.
        job = trainer_images.with_default(jobs.validate_job(manifest), TRAINER_IMAGES)
        pods += [render.render_pod(job, pod) for pod in range(jobs.pod_count(job))]
    return pods


def loosened(pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` with what a podTemplate could ask for and restricted refuses: the judge must
    see each of LOOSENED, or its silence on the other pods means nothing."""
    pod = copy.deepcopy(pod)
    pod["metadata"].update(namespace="loosened", name="loose")
    spec = pod["spec"]
    spec.update(hostNetwork=True, automountServiceAccountToken=True)
    spec["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"].update(
        privileged=True, allowPrivilegeEscalation=True, capabilities={"add": ["NET_ADMIN"]}
    )
    return pod


def test_rank_pods_and_chart_pass_pod_security_restricted(tmp_path: Path) -> None:
    pods = example_pods()
    assert len(pods) > len(EXAMPLES)  # every pod, not one per example
    loose = loosened(pods[0])
    objects = [*pods, loose, *helm_template()]
    # One checkov run for all (it takes seconds to start).
    report = check_restricted(objects, tmp_path, allowed=API_CLIENTS)
    assert report.workloads == len(pods) + 2  # and the loosened pod, the operator's Deployment

    mark = f"{resource_id(loose)}: "
    caught = {f[len(mark) :] for f in report.findings if f.startswith(mark)}
    print(f"{report}, {len(caught)} of them on the loosened pod")
    assert {what for what in LOOSENED if not any(c.startswith(what) for c in caught)} == set()
    findings = [f for f in report.findings if not f.startswith(mark)]
    if findings:
        pytest.fail("Pod Security restricted:\n" + "\n".join(findings), pytrace=False)
