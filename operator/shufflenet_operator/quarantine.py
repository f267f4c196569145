"""Quarantine: which nodes a whole-job restart blames, and until when (pure functions).

At a restart (`policy.failures_and_backoff`) each failed rank is looked at with its pod's
node as observed (`Observed.nodes`): a node that is not Ready, a node whose allocatable count
of the job's device resource is below its capacity (the kubelet lowers allocatable when a
device plugin reports a device Unhealthy: pkg/kubelet/cm/devicemanager/manager.go,
GetCapacity, counts healthy and unhealthy devices in capacity, healthy ones only in
allocatable), or a node a rank already failed on in an
earlier attempt is blamed: the next attempt's rank pods keep off it (`render.avoid_nodes`)
until `until`. An application failure (exit 1, 2, 3: permanent, and never retried anyway)
and a rank that only lost a peer (exit 134) blame nothing.

Decay: a node blamed for the first time is avoided `base` seconds; blamed again while its
last blame is not yet forgiven (`until` + `forgive` seconds) for twice as long, up to `cap`.
An entry is dropped once forgiven. The job's status keeps both lists, bounded:
`status.quarantine` ({node, reason, until, chip, strikes}) and `status.failedNodes`
({node, time}: nodes ranks failed on, blamed or not, to see a second failure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shufflenet_contract import exitcodes

from . import status as st

HOSTNAME_LABEL = "kubernetes.io/hostname"
# Bounds of the status lists: a job never carries more than this many entries of each.
MAX_ENTRIES = 16

NODE_NOT_READY = "NodeNotReady"
DEVICE_UNHEALTHY = "DeviceUnhealthy"
REPEATED_FAILURE = "RepeatedFailure"

# The trainer's own verdicts: a bad configuration (2) or data (3), an error in the program
# (1); and 134, a rank that lost a peer (the peer's node is the one to blame, if any).
APPLICATION_EXITS = frozenset({1, exitcodes.EXIT_CONFIG, exitcodes.EXIT_DATA})
PEER_LOST = exitcodes.EXIT_DIST
# Reasons a pod fails with that are the job's own doing, whatever its node.
APPLICATION_REASONS = frozenset({"OOMKilled", "PodDeleted"})


@dataclass(frozen=True)
class Rules:
    """The operator's --quarantine* flags: seconds; `base` 0 turns quarantine off."""

    base: float = 300.0
    cap: float = 3600.0
    forgive: float = 3600.0

    @property
    def enabled(self) -> bool:
        return self.base > 0


@dataclass(frozen=True)
class Failed:
    """A failed rank as blame sees it: its node (None: never scheduled), exit code and
    reason (status.Failure), and what its node said (a Node as read, None if unreadable)."""

    node: str | None
    exit_code: int | None
    reason: str
    node_obj: Mapping[str, Any] | None = None
    chip: str | None = None


def node_ready(node: Mapping[str, Any] | None) -> bool | None:
    """The node's Ready condition: True, False (False or Unknown: the node lifecycle
    controller sets Unknown when the kubelet stops posting), None when not known."""
    if node is None:
        return None
    conds = (node.get("status") or {}).get("conditions") or []
    ready = st.get_condition(conds, "Ready")
    if ready is None:
        return None
    return ready.get("status") == "True"


def unhealthy_devices(node: Mapping[str, Any] | None, resource: str | None) -> int:
    """How many of the node's `resource` devices are not allocatable (Unhealthy)."""
    if node is None or not resource:
        return 0
    status = node.get("status") or {}
    capacity = (status.get("capacity") or {}).get(resource)
    allocatable = (status.get("allocatable") or {}).get(resource)
    if not str(capacity or "").isdigit() or not str(allocatable or "").isdigit():
        return 0
    return max(0, int(capacity) - int(allocatable))


def _hardware_suspect(f: Failed) -> bool:
    """Whether the failure could be the node's (not the program's, not a lost peer)."""
    if f.exit_code in APPLICATION_EXITS or f.exit_code == PEER_LOST:
        return False
    return f.reason not in APPLICATION_REASONS


def _reason(
    f: Failed, resource: str | None, failed_before: set[str]
) -> tuple[str, str | None] | None:
    """(reason, chip) the node of `f` is blamed for, or None."""
    if f.node is None or f.exit_code in APPLICATION_EXITS:
        return None
    if node_ready(f.node_obj) is False:
        return NODE_NOT_READY, None
    bad = unhealthy_devices(f.node_obj, resource)
    if bad and f.exit_code != PEER_LOST:
        return DEVICE_UNHEALTHY, f.chip or f"{bad} {resource} Unhealthy"
    if _hardware_suspect(f) and f.node in failed_before:
        return REPEATED_FAILURE, None
    return None


def _forgiven(entry: Mapping[str, Any], now: datetime, rules: Rules) -> bool:
    until = st.parse_time(entry.get("until"))
    return until is None or until + timedelta(seconds=rules.forgive) <= now


def blame(
    failed: Iterable[Failed],
    quarantine: Sequence[Mapping[str, Any]],
    failed_nodes: Sequence[Mapping[str, Any]],
    *,
    resource: str | None,
    now: datetime,
    rules: Rules,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(status.quarantine, status.failedNodes) after the failures of one attempt."""
    if not rules.enabled:
        return [], []
    entries = {
        str(e.get("node")): dict(e)
        for e in quarantine
        if isinstance(e, Mapping) and not _forgiven(e, now, rules)
    }
    window = timedelta(seconds=rules.forgive)
    history = [
        dict(h)
        for h in failed_nodes
        if isinstance(h, Mapping)
        and (t := st.parse_time(h.get("time"))) is not None
        and t + window > now
    ]
    failed_before = {str(h.get("node")) for h in history}
    for f in failed:
        why = _reason(f, resource, failed_before)
        if why is not None and f.node is not None:
            old = entries.get(f.node)
            strikes = int(old.get("strikes") or 0) + 1 if old else 1
            seconds = min(rules.cap, rules.base * 2 ** (strikes - 1))
            entry = {
                "node": f.node,
                "reason": why[0],
                "until": st.format_time(now + timedelta(seconds=seconds)),
                "strikes": strikes,
            }
            if why[1]:
                entry["chip"] = why[1]
            entries[f.node] = entry
        if f.node is not None and _hardware_suspect(f):
            history.append({"node": f.node, "time": st.format_time(now)})
    ordered = sorted(entries.values(), key=lambda e: str(e["until"]), reverse=True)
    return ordered[:MAX_ENTRIES], history[-MAX_ENTRIES:]


def active(quarantine: Sequence[Mapping[str, Any]] | None, now: datetime) -> list[str]:
    """The nodes to keep off now, sorted."""
    nodes = set()
    for e in quarantine or []:
        until = st.parse_time(e.get("until")) if isinstance(e, Mapping) else None
        if until is not None and until > now:
            nodes.add(str(e.get("node")))
    return sorted(nodes)


def avoid_nodes(pod: Mapping[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
    """`pod` with a required node affinity `kubernetes.io/hostname NotIn nodes`, added to
    each of its own nodeSelectorTerms (the terms are ORed, the expressions of a term ANDed:
    adding it to one term would let the others place the pod on a quarantined node)."""
    if not nodes:
        return dict(pod)
    spec = dict(pod.get("spec") or {})
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    keep_off = {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": list(nodes)}
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), keep_off]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity
    return {**pod, "spec": spec}


def stuck_terminating(
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    timeout: float,
) -> tuple[list[Mapping[str, Any]], float | None]:
    """(pods to force-delete, seconds until the next one is due). A pod being deleted on a
    node that is not Ready waits for a kubelet that cannot confirm it (the API server keeps
    it until the kubelet does, or someone deletes it with grace period 0): past
    `timeout` seconds after its deletionTimestamp (which is the deletion time plus its grace
    period) it is force-deleted so that its names and devices free up. timeout < 0: never.
    `nodes` need only hold the nodes of pods past their grace (`kube` reads no others): one
    still within it is looked at again when its grace ends."""
    due: list[Mapping[str, Any]] = []
    lefts: list[float] = []
    if timeout < 0:
        return due, None
    for pod in pods:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        deleting = st.parse_time(meta.get("deletionTimestamp"))
        if deleting is None or not node:
            continue
        grace_left = (deleting - now).total_seconds()
        if node not in nodes and grace_left > 0:
            lefts.append(grace_left)  # its node is read once the grace has passed
            continue
        if node_ready(nodes.get(node)) is not False:
            continue
        left = grace_left + timeout
        if left <= 0:
            due.append(pod)
        else:
            lefts.append(left)
    return due, min(lefts) if lefts else None


def describe(quarantine: Sequence[Mapping[str, Any]] | None, now: datetime) -> str:
    """`node (reason, until T)` of each active entry, for a waiting message."""
    return ", ".join(
        f"{e.get('node')} ({e.get('reason')}, until {e.get('until')})"
        for e in quarantine or []
        if str(e.get("node")) in active([e], now)
    )
