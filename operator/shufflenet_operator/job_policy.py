"""The operator's job policy: what a job may ask of its rank pods (pure functions).

Whoever may create a job has the operator create pods for it, with the operator's rights:
without a limit, spec.podTemplate (and the data and checkpoint volumes) would make any pod
(privileged, in the host's namespaces, with the node's filesystem). The admin picks a level
with the operator's --job-policy (chart value operator.jobPolicy), named as Pod Security's
and checked by its rules (`pod_security`):

- `privileged`: anything goes (a job's author is trusted as much as the operator);
- `baseline` (the default): Pod Security "baseline" (no privileged container, no host
  namespace, hostPath or hostPort, no added capability beyond the default set...);
- `restricted`: Pod Security "restricted", which the rank pods as rendered pass.

Below `privileged` the policy also refuses a podTemplate's serviceAccountName (or its old
alias serviceAccount) other than `default`: a rank pod would run with another
ServiceAccount's rights. That rule is the operator's own, not Pod Security's.

A job the policy refuses fails InvalidSpec like any invalid spec, naming the job's field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shufflenet_contract import job as jobs

from . import pod_security, render

LEVELS = pod_security.LEVELS
DEFAULT_LEVEL = pod_security.BASELINE
SETTING = "--job-policy, chart value operator.jobPolicy"

# The volumes of the job's own fields (the podTemplate may name a volume so too).
_VOLUME_FIELDS = {
    render.DATA_VOLUME: "spec.data.volume",
    render.CHECKPOINT_VOLUME: "spec.checkpoint.volume",
}
_VOLUME_PATH = re.compile(r"^spec\.volumes\[([^\]]*)\](.*)$")


def refusals(
    job: Mapping[str, Any], level: str, *, device_group: int | None = None
) -> list[pod_security.Violation]:
    """What the valid `job` asks of its rank pods that `level` refuses, by the job's field.

    Rank 0's pod stands for all: the ranks differ only in what the operator sets (name,
    labels, env values, metrics ports without host ports), never in what the job's author
    controls (spec.podTemplate, the data and checkpoint volumes).
    """
    pod = render.render_pod(job, 0, device_group=device_group)
    found = pod_security.violations(pod, level)
    if level != pod_security.PRIVILEGED:
        found += _service_account(pod)
    return [pod_security.Violation(job_field(job, v.path), v.reason) for v in found]


def check(job: Mapping[str, Any], level: str, *, device_group: int | None = None) -> None:
    """ManifestError naming the job's first refused field, the level and the setting."""
    found = refusals(job, level, device_group=device_group)
    if not found:
        return
    first, *more = found
    also = f"; also {', '.join(v.path for v in more)}" if more else ""
    raise jobs.ManifestError(
        f'{first.path}: refused by the operator\'s job policy "{level}" ({SETTING}): '
        f"{first.reason}{also}"
    )


def job_field(job: Mapping[str, Any], pod_path: str) -> str:
    """The job's field that sets `pod_path` of its rank pods: the data or checkpoint volume
    for theirs (unless the podTemplate replaces it), spec.podTemplate for anything else."""
    match = _VOLUME_PATH.match(pod_path)
    if match and match[1] in _VOLUME_FIELDS and match[1] not in _template_volumes(job):
        return _VOLUME_FIELDS[match[1]] + match[2]
    return f"spec.podTemplate.{pod_path}"


def _template_volumes(job: Mapping[str, Any]) -> set[Any]:
    template = job["spec"].get("podTemplate") or {}
    spec = template.get("spec") if isinstance(template, dict) else None
    volumes = spec.get("volumes") if isinstance(spec, dict) else None
    return (
        {v.get("name") for v in volumes if isinstance(v, dict)}
        if isinstance(volumes, list)
        else set()
    )


def _service_account(pod: Mapping[str, Any]) -> list[pod_security.Violation]:
    spec = pod["spec"]
    return [
        pod_security.Violation(
            f"spec.{field}",
            f"a rank pod runs as the namespace's default ServiceAccount, not {spec[field]!r}",
        )
        for field in ("serviceAccountName", "serviceAccount")
        if spec.get(field) not in (None, "", "default")
    ]
