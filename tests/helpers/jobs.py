"""The one builder of ShuffleNetTrainingJob manifests in the tests."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from shufflenet_contract import crd

# The trainer images the chart gives the operator by default (--trainer-image DEVICE=REF):
# what the examples, which name no image, run.
TRAINER_IMAGES = {
    device: f"registry.test:5000/shufflenet/trainer-{device}:0.1.0" for device in crd.DEVICE_TYPES
}


def job_manifest(
    name: str = "sn",
    *,
    devices: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A job manifest as a user writes it (not validated, no defaults filled in).

    The spec has an image and `devices` (default: 8 NPUs); keyword arguments add or replace
    whole spec fields (`training={...}` replaces the training block). Callers with their own
    defaults merge them first: `job_manifest(name, **{**defaults, **overrides})`.
    """
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": name, **copy.deepcopy(dict(metadata or {}))},
        "spec": {
            "image": "trainer:1",
            "devices": dict(devices or {"type": "npu", "count": 8}),
            **copy.deepcopy(spec),
        },
    }
