"""Rank pods -> what the job's status says about them (pure functions).

Pods are plain dicts in the API's camelCase form (as `ApiClient.sanitize_for_serialization`
or a watch event gives them). Conditions follow the Kubernetes convention: one entry per
type, `lastTransitionTime` changes only when `status` does.
"""

from __future__ import annotations

import dataclasses
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


# Why a rank pod has not started, as the kubelet and the scheduler post it on the pod.
#
# The kubelet: a container that could not be started is left `state.waiting` with the
# `reason` and `message` of the error that stopped it (pkg/kubelet/kubelet_pods.go,
# convertToAPIContainerStatuses, from its reasonCache). Its reasons are the error strings of
# pkg/kubelet/images/types.go (ErrImagePull; ImagePullBackOff while it waits to pull again,
# with the message `Back-off pulling image "<image>"`; InvalidImageName, ErrImageNeverPull,
# ImageInspectError, RegistryUnavailable) and pkg/kubelet/kuberuntime/kuberuntime_container.go
# (CreateContainerConfigError: a Secret or ConfigMap the container names is missing;
# CreateContainerError). A container not created yet waits as ContainerCreating (or
# PodInitializing behind init containers): nothing to report. Any other reason is reported
# as posted, so that reasons of later kubelets need no change here.
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# The kubelet alternates these while it retries a pull (image_manager.go's backOff): one
# trouble, one Event.
SAME_TROUBLE = {"ImagePullBackOff": "ErrImagePull"}
# The scheduler: a pod it could not place gets the condition PodScheduled False, reason
# Unschedulable (v1.PodReasonUnschedulable) and its FitError as the message ("0/4 nodes are
# available: 4 Insufficient huawei.com/Ascend910."), posted by recordSchedulingFailure in
# pkg/scheduler/scheduler.go; Volcano posts the same condition for the tasks of a gang it
# cannot place (pkg/scheduler/cache: taskUnschedulable), with Unschedulable or Undetermined,
# and Schedulable for a pod about to be bound, which is no trouble. No condition at all: no
# scheduler has looked at the pod yet; past `Settings.scheduler_wait_seconds`, none will.
SCHEDULABLE = "Schedulable"
NO_SCHEDULER = "SchedulerNotResponding"


@dataclass(frozen=True)
class Waiting:
    """Why a rank pod (the first of `count` alike) has not started; `scheduling`: the
    scheduler's trouble (the Scheduled condition), else the kubelet's (Running)."""

    reason: str
    message: str
    scheduling: bool
    count: int = 1

    def status(self) -> dict[str, str]:
        """status.waiting, which `kubectl get snjob` shows as its Waiting column."""
        more = f" ({self.count - 1} more rank pods alike)" if self.count > 1 else ""
        return {"reason": self.reason, "message": self.message + more}


def _container_waiting(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for c in status.get(key) or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in STARTING_REASONS:
                return str(c.get("name")), str(reason), str(waiting.get("message") or "")
    return None


def pod_waiting(
    pod: Mapping[str, Any], index: int, now: datetime, scheduler_wait: float
) -> Waiting | None:
    """Why rank pod `index` has not started, as the kubelet or the scheduler posted it;
    None while it starts as it should (or runs, or has ended)."""
    if pod_phase(pod) != "Pending" or is_deleting(pod):
        return None
    name = (pod.get("metadata") or {}).get("name", f"rank {index}")
    container = _container_waiting(pod)
    if container is not None:
        cname, reason, message = container
        return Waiting(reason, f"rank {index} pod {name} container {cname}: {message}", False)
    if is_scheduled(pod):
        return None
    conditions = (pod.get("status") or {}).get("conditions") or []
    cond = get_condition(conditions, "PodScheduled")
    if cond is not None:
        reason = str(cond.get("reason") or "")
        if cond.get("status") != "False" or not reason or reason == SCHEDULABLE:
            return None
        return Waiting(reason, f"rank {index} pod {name}: {cond.get('message') or reason}", True)
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    if created is None or (now - created).total_seconds() < scheduler_wait:
        return None
    scheduler = (pod.get("spec") or {}).get("schedulerName") or "default-scheduler"
    return Waiting(
        NO_SCHEDULER,
        f"no scheduler has looked at rank {index} pod {name} in {scheduler_wait:g}s: "
        f'schedulerName "{scheduler}" (spec.scheduling.schedulerName; volcano when '
        "spec.scheduling.gang is true and it is left out) names no scheduler running on "
        "this cluster, or one that is not keeping up",
        True,
    )


def job_waiting(
    pods: Mapping[int, Mapping[str, Any]], now: datetime, scheduler_wait: float
) -> tuple[Waiting | None, Waiting | None]:
    """(the kubelet's, the scheduler's) trouble of the lowest rank pod that has one, each
    with how many rank pods have one of its kind."""
    found: dict[bool, list[Waiting]] = {False: [], True: []}
    for index in sorted(pods):
        waiting = pod_waiting(pods[index], index, now, scheduler_wait)
        if waiting is not None:
            found[waiting.scheduling].append(waiting)
    first = {
        kind: dataclasses.replace(ws[0], count=len(ws)) if ws else None
        for kind, ws in found.items()
    }
    return first[False], first[True]


def scheduler_wait_left(
    pods: Iterable[Mapping[str, Any]], now: datetime, scheduler_wait: float
) -> float | None:
    """Seconds until the next unscheduled pod without a PodScheduled condition is overdue
    (None: none is waiting to be): when to look again."""
    lefts = []
    for pod in pods:
        conditions = (pod.get("status") or {}).get("conditions") or []
        created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
        if is_scheduled(pod) or get_condition(conditions, "PodScheduled") or created is None:
            continue
        left = scheduler_wait - (now - created).total_seconds()
        if left > 0:
            lefts.append(left)
    return min(lefts) if lefts else None


def waiting_events(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Event]:
    """A Warning when rank pods start waiting for a reason, or for another one (not when
    only its message changes, nor for the kubelet's ErrImagePull/ImagePullBackOff
    alternation)."""
    if not new:
        return []
    if old and _trouble(old.get("reason")) == _trouble(new.get("reason")):
        return []
    return [Event("Warning", str(new.get("reason")), str(new.get("message")))]


def _trouble(reason: Any) -> Any:
    return SAME_TROUBLE.get(reason, reason)


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
