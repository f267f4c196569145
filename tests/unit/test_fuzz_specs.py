"""Fuzzed job specs through the operator's decision path (validation, render, policy.plan).

At least 2,000 mutations of the example manifests (tests/helpers/spec_mutations.py), seeded.
Each one either ends InvalidSpec with a message that starts with the field path it is about
and creates nothing, or is accepted: its children render (valid names, string env values),
the job gets a condition, and the next reconcile with those pods decides too. The operator
never raises. The outcome counts are in docs/reliability.md.
"""

from __future__ import annotations

import collections
import copy
import re
from datetime import datetime, timezone
from typing import Any

from helpers.fixed_draws import local_constants_off
from helpers.jobs import TRAINER_IMAGES
from helpers.spec_mutations import Case, cases
from hypothesis import HealthCheck, given, settings

from shufflenet_contract import job as jobs
from shufflenet_operator import job_policy, policy, trainer_images
from shufflenet_operator import status as st
from shufflenet_operator.observed import Observed

EXAMPLES = 2000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# The chart's operator: a default trainer image per device type (the examples name none).
SETTINGS = policy.Settings(trainer_images=TRAINER_IMAGES)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Checks across fields name the field the rule is written on: the global batch must divide
# over devices.count, perPod must divide it, an Ascend pod holds certain chip counts.
RELATED = {
    "spec.training.batchSize": {"spec.devices", "spec.training.batchSize"},
    "spec.devices.perPod": {"spec.devices"},
    "spec.devices.count": {"spec.devices"},
}

outcomes: collections.Counter[str] = collections.Counter()


def _reconcile(obj: dict[str, Any], pods: list[dict[str, Any]]) -> policy.Plan:
    return policy.plan(Observed(obj, pods), now=T0, settings=SETTINGS)


def _names_the_mutated_field(case: Case, message: str) -> bool:
    """The message starts with a mutated field's path, a field inside it, or (for checks
    across fields) the field the rule is written on."""
    for m in case.mutations:
        for k in range(len(m.path), min(2, len(m.path)) - 1, -1):
            prefix = ".".join(m.path[:k])
            if any(message.startswith(prefix + end) for end in (": ", ".", "[")):
                return True
        mutated = ".".join(m.path)
        for field, causes in RELATED.items():
            if message.startswith(field + ": ") and any(mutated.startswith(c) for c in causes):
                return True
    return False


def _check_invalid(case: Case, plan: policy.Plan) -> None:
    assert plan.create == [] and plan.delete_pods == [], case.describe()
    failed = st.get_condition(plan.status["conditions"], st.FAILED)
    assert failed is not None and failed["reason"] == "InvalidSpec", case.describe()
    message = str(failed["message"])
    assert _names_the_mutated_field(case, message), (case.describe(), message)
    assert plan.status["phase"] == "Failed"


def _check_accepted(
    case: Case, job: dict[str, Any], obj: dict[str, Any], plan: policy.Plan
) -> None:
    assert plan.status.get("conditions"), case.describe()
    pods = [m for m in plan.create if m["kind"] == "Pod"]
    suspended = job["spec"]["runPolicy"]["suspend"]
    assert len(pods) == (0 if suspended else jobs.pod_count(job)), case.describe()
    for pod in pods:
        name = pod["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), (case.describe(), name)
        for container in pod["spec"]["containers"]:
            for var in container.get("env") or []:
                assert isinstance(var.get("value", ""), str), (case.describe(), var)
    # The next reconcile sees what this one created.
    obj = {**obj, "status": copy.deepcopy(plan.status)}
    created = copy.deepcopy(pods)
    for i, pod in enumerate(created):
        pod["metadata"]["uid"] = f"uid-{i}"
    again = _reconcile(obj, created)
    assert again.status.get("conditions"), case.describe()
    assert not [m for m in again.create if m["kind"] == "Pod"], case.describe()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same mutations every run: counts in docs/reliability.md hold
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=cases())
def _one_mutation(case: Case) -> None:
    obj = {**copy.deepcopy(case.manifest)}
    if isinstance(obj.get("metadata"), dict):
        obj["metadata"] = {**obj["metadata"], "namespace": "ns", "uid": "job-uid"}
    try:
        job = jobs.validate_job({k: obj.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
        job = trainer_images.with_default(job, SETTINGS.trainer_images)  # "" is no image
        job_policy.check(job, SETTINGS.job_policy)  # a hostPath volume, hostNetwork...
    except jobs.ManifestError:
        job = None
    plan = _reconcile(obj, [])  # never raises, whatever the spec
    if job is None:
        outcomes["invalid"] += 1
        _check_invalid(case, plan)
    else:
        outcomes["accepted"] += 1
        _check_accepted(case, job, obj, plan)


def test_fuzzed_specs_end_invalid_naming_the_field_or_are_accepted() -> None:
    outcomes.clear()
    with local_constants_off():  # the same cases whatever ran before (helpers/fixed_draws.py)
        _one_mutation()
    assert outcomes.total() >= EXAMPLES, outcomes
    assert outcomes["invalid"] and outcomes["accepted"], outcomes
    print(f"fuzzed specs: {dict(outcomes)}")
