"""Rank pods -> what the job's status says about them (pure functions).

Pods are plain dicts in the API's camelCase form (as `ApiClient.sanitize_for_serialization`
or a watch event gives them). Conditions follow the Kubernetes convention: one entry per
type, `lastTransitionTime` changes only when `status` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shufflenet_contract import exitcodes

from . import render

# Condition types, in the order `kubectl describe` shows them.
CREATED = "Created"
SCHEDULED = "Scheduled"
RANKTABLE_READY = "RankTableReady"
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CONDITION_TYPES = (
    CREATED,
    SCHEDULED,
    RANKTABLE_READY,
    RUNNING,
    RESTARTING,
    SUSPENDED,
    SUCCEEDED,
    FAILED,
)


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_label(pod: Mapping[str, Any], key: str) -> int | None:
    text = ((pod.get("metadata") or {}).get("labels") or {}).get(key, "")
    return int(text) if str(text).isdigit() else None


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    return _int_label(pod, render.RANK_LABEL)


def pod_restart(pod: Mapping[str, Any]) -> int | None:
    return _int_label(pod, render.RESTART_LABEL)


def pod_phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_scheduled(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName"))


def exit_code(pod: Mapping[str, Any]) -> int | None:
    """The trainer container's exit code once it has terminated (the first non-zero one of
    any container otherwise)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    codes: list[tuple[bool, int]] = []
    for s in statuses:
        term = (s.get("state") or {}).get("terminated")
        if term and term.get("exitCode") is not None:
            codes.append((s.get("name") == render.CONTAINER, int(term["exitCode"])))
    for is_trainer, code in codes:
        if is_trainer:
            return code
    return next((code for _, code in codes if code), codes[0][1] if codes else None)


@dataclass(frozen=True)
class Failure:
    """Why a rank pod ended badly; `retryable` failures restart the whole job."""

    rank: int
    reason: str
    message: str
    retryable: bool
    exit_code: int | None = None


def pod_failure(pod: Mapping[str, Any], rank: int) -> Failure | None:
    """The failure a rank pod shows, or None while it is fine (or has succeeded)."""
    name = (pod.get("metadata") or {}).get("name", f"rank {rank}")
    if is_deleting(pod):
        return Failure(rank, "PodDeleted", f"rank {rank} pod {name} was deleted", True)
    if pod_phase(pod) != "Failed":
        return None
    code = exit_code(pod)
    status = pod.get("status") or {}
    if code is None:
        # Evicted, lost its node, refused by kubelet (UnexpectedAdmissionError...): nothing
        # the trainer did, so another attempt may well work.
        reason = str(status.get("reason") or "PodFailed")
        detail = status.get("message") or "failed without an exit code"
        return Failure(rank, reason, f"rank {rank} pod {name}: {reason}: {detail}", True)
    if code in exitcodes.PERMANENT_REASONS:
        reason = exitcodes.PERMANENT_REASONS[code]
        message = f"rank {rank} pod {name} exited {code} ({reason})"
        return Failure(rank, reason, message, False, code)
    if exitcodes.is_retryable(code):
        return Failure(rank, "RetryableExit", f"rank {rank} pod {name} exited {code}", True, code)
    # 1..127 other than 2 and 3: an error in the program; restarting would repeat it.
    return Failure(rank, "Error", f"rank {rank} pod {name} exited {code}", False, code)


def rank_counts(
    pods: Iterable[Mapping[str, Any]], total: int, ranks_per_pod: int = 1
) -> dict[str, int]:
    """status.ranks: ranks (not pods) by their pod's state; `total` is the world size."""
    pods = list(pods)
    phases = [pod_phase(p) for p in pods]
    return {
        "total": total,
        "scheduled": ranks_per_pod * sum(1 for p in pods if is_scheduled(p)),
        "running": ranks_per_pod * phases.count("Running"),
        "succeeded": ranks_per_pod * phases.count("Succeeded"),
        "failed": ranks_per_pod * phases.count("Failed"),
    }


def get_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def condition_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == "True")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new condition list with `type_` set; the transition time moves only on a change."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        changed = c.get("status") != value
        stamp = format_time(now) if changed else c.get("lastTransitionTime", format_time(now))
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": stamp,
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": format_time(now),
            }
        )
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(str(c.get("type")), len(order)))


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the job."""

    type: str  # Normal or Warning
    reason: str
    message: str


# Why a job waits on an object that has the name of one of its children but is not its own
# (see policy.children_not_owned): the reason of the condition that says so.
CHILD_NOT_OWNED = "ChildNotOwned"

_WARNING_WHEN_TRUE = {RESTARTING, FAILED}
# False conditions that need someone to act: a Warning whenever they come or change.
_WARNING_WHEN_FALSE = {CHILD_NOT_OWNED}


def transition_events(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[Event]:
    """One Event per condition that became True (and per Running that stopped), and a
    Warning per False condition that asks for someone to act, when it comes or changes."""
    events = []
    for cond in new:
        before = get_condition(old, str(cond.get("type")))
        if cond.get("status") == "False" and cond.get("reason") in _WARNING_WHEN_FALSE:
            if before is None or _said(before) != _said(cond):
                events.append(Event("Warning", str(cond["reason"]), str(cond.get("message"))))
            continue
        if before is not None and before.get("status") == cond.get("status"):
            continue
        type_ = str(cond.get("type"))
        if cond.get("status") == "True":
            kind = "Warning" if type_ in _WARNING_WHEN_TRUE else "Normal"
            events.append(Event(kind, str(cond.get("reason") or type_), str(cond.get("message"))))
        elif before is not None and type_ == RUNNING:
            events.append(Event("Normal", str(cond.get("reason")), str(cond.get("message"))))
    return events


def _said(cond: Mapping[str, Any]) -> tuple[Any, ...]:
    return cond.get("status"), cond.get("reason"), cond.get("message")
