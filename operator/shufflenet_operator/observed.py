"""What one reconcile read of a job from the API server: the input of `policy.plan`.

Its own module so that the edge that reads it (`kube`) and the pure functions that decide
on it (`policy`) share one type without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether `obj` names the object of `uid` among its owners: only then is it that
    object's child (a name alone proves nothing: anyone may have made an object of it)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(ref, dict) and ref.get("uid") == uid for ref in refs)


@dataclass(frozen=True)
class Observed:
    """A job as read from the API (any status, a spec not yet validated) and what exists
    of it.

    `pods` are the pods the job owns; `service`/`configmap` its headless Service and
    rank-table ConfigMap (None when missing, or not the job's); `has_podgroup` whether its
    PodGroup exists. `foreign_pods` counts pods with the job's label owned by something
    else: those of a deleted job of the same name, which the garbage collector has yet to
    remove and whose names the new pods need. `foreign_children` are the (kind, name) of the
    objects that have the name of one of the job's children but are not the job's (no owner
    reference to its uid): the operator leaves them alone and the job waits for the name.
    `nodes` are the Nodes (by name) of the pods that failed or are being deleted, as far as
    they could be read: what `quarantine` blames and what keeps a pod stuck Terminating.
    """

    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] | None = None
    configmap: dict[str, Any] | None = None
    foreign_pods: int = 0
    has_podgroup: bool = False
    foreign_children: tuple[tuple[str, str], ...] = ()
    nodes: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def foreign(self, kind: str) -> bool:
        """Whether the job's child of this kind (Service, ConfigMap, PodGroup) has its name
        taken by an object that is not the job's."""
        return any(k == kind for k, _ in self.foreign_children)
