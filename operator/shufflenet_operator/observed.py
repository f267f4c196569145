"""What one reconcile read of a job from the API server: the input of `policy.plan`.

Its own module so that the edge that reads it (`kube`) and the pure functions that decide
on it (`policy`) share one type without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Observed:
    """A job as read from the API (any status, a spec not yet validated) and what exists
    of it.

    `pods` are the pods the job owns; `service`/`configmap` its headless Service and
    rank-table ConfigMap (None when missing); `has_podgroup` whether its PodGroup exists.
    `foreign_pods` counts pods with the job's label owned by something else: those of a
    deleted job of the same name, which the garbage collector has yet to remove and whose
    names the new pods need.
    """

    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] | None = None
    configmap: dict[str, Any] | None = None
    foreign_pods: int = 0
    has_podgroup: bool = False
