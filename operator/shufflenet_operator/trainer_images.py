"""The trainer image of a job that names none: the operator's default for its device type.

A job may leave `spec.image` empty; the operator then runs its ranks from the image it was
started with for the job's device type (`--trainer-image DEVICE=REF`, which the chart sets
from its trainer image values), so the same manifest runs on every cluster, each pulling from
its own registry. A job of a device type with no default fails InvalidSpec.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from shufflenet_contract import crd
from shufflenet_contract import job as jobs

FLAG = "--trainer-image"
FORM = (
    f"DEVICE=REF with DEVICE one of {', '.join(crd.DEVICE_TYPES)}, "
    "e.g. cpu=registry.internal:5000/shufflenet/trainer-cpu:0.1.0"
)


def parse(text: str) -> tuple[str, str]:
    """`cpu=REF` -> ("cpu", REF); ValueError naming the form otherwise."""
    device, sep, ref = text.partition("=")
    if not sep or device not in crd.DEVICE_TYPES or not ref or any(c.isspace() for c in ref):
        raise ValueError(f"{text!r}: {FORM}")
    return device, ref


def with_default(job: Mapping[str, Any], images: Mapping[str, str]) -> Mapping[str, Any]:
    """`job` (validated) with spec.image filled in from `images` when it names none (a new
    dict then); jobs.ManifestError when it names none and its device type has no default."""
    if job["spec"].get("image"):
        return job
    device = jobs.device_type(job)
    if device not in images:
        raise jobs.ManifestError(
            f"spec.image: not set, and the operator has no default trainer image for "
            f"{device} jobs: set spec.image, or start the operator with "
            f"{FLAG} {device}=REF (chart value trainer.images.{device})"
        )
    filled = copy.deepcopy(dict(job))
    filled["spec"]["image"] = images[device]
    return filled
