"""Reconciliation decisions: job + observed children -> a plan of changes (pure functions).

`plan()` is level-based: it looks at the whole job (spec, status, rank pods, Service, rank
table ConfigMap) every time and says what to create, delete and write, so that running it
again after a crash, or twice for one event, does no harm. The only memory is the job's own
status: `restarts` (the current attempt; pods carry it as a label), the `Created` condition
(all pods of this attempt were created: a missing pod now means a deleted one), and the
`Restarting` condition's transition time (start of the backoff).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shufflenet_contract import job as jobs
from shufflenet_contract import ranktable

from . import render
from . import status as st

PENDING, CREATING, RUNNING = "Pending", "Creating", "Running"
RESTARTING, SUCCEEDED, FAILED, SUSPENDED = "Restarting", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (command-line flags of shufflenet-operator)."""

    restart_backoff_seconds: float = 10.0  # delay before the first whole-job restart
    max_backoff_seconds: float = 300.0  # the doubling delay stops growing here


def backoff_delay(restarts: int, settings: Settings) -> float:
    """Seconds to wait before starting attempt `restarts` (1 = the first restart)."""
    if restarts <= 0:
        return 0.0
    return min(settings.max_backoff_seconds, settings.restart_backoff_seconds * 2 ** (restarts - 1))


@dataclass
class Plan:
    """What one reconcile should do; applied in order: create, configmap, status, delete."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    configmap_data: dict[str, str] | None = None
    events: list[st.Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    restarted: bool = False
    ranktable_completed: bool = False

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


class _Ctx:
    """The job being planned and the status being built."""

    def __init__(self, obj: Mapping[str, Any], now: datetime) -> None:
        self.obj = obj
        self.now = now
        old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        self.old_conditions: list[dict[str, Any]] = [
            dict(c) for c in (old.get("conditions") or []) if isinstance(c, dict)
        ]
        self.status: dict[str, Any] = copy.deepcopy(old)
        self.status["conditions"] = [dict(c) for c in self.old_conditions]
        self.plan = Plan(status=self.status)

    def cond(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.status["conditions"] = st.set_condition(
            self.status["conditions"], type_, value, reason, message, self.now
        )

    def is_true(self, type_: str) -> bool:
        return st.condition_true(self.status["conditions"], type_)

    def clear(self, type_: str, reason: str, message: str) -> None:
        """Set a condition False, but only if it exists (no noise for never-true ones)."""
        if st.get_condition(self.status["conditions"], type_) is not None:
            self.cond(type_, False, reason, message)

    def fail(self, reason: str, message: str) -> None:
        self.cond(st.FAILED, True, reason, message)
        self.clear(st.RUNNING, reason, message)
        self.clear(st.RESTARTING, reason, message)
        self.status["phase"] = FAILED
        self.status.setdefault("completionTime", st.format_time(self.now))

    def done(self) -> Plan:
        self.plan.events = st.transition_events(self.old_conditions, self.status["conditions"])
        return self.plan


def _delete(ctx: _Ctx, pods: Sequence[Mapping[str, Any]]) -> None:
    for pod in pods:
        if st.is_deleting(pod):
            continue
        meta = pod.get("metadata") or {}
        ctx.plan.delete_pods.append((str(meta.get("name")), str(meta.get("uid"))))


def _cleanup(ctx: _Ctx, pods: Sequence[Mapping[str, Any]], policy: str) -> None:
    """spec.runPolicy.cleanPodPolicy once the job has finished."""
    if policy == "All":
        _delete(ctx, pods)
    elif policy == "Running":
        _delete(ctx, [p for p in pods if st.pod_phase(p) in ("Pending", "Running", "Unknown")])


def _finished(
    ctx: _Ctx, current: Mapping[int, Mapping[str, Any]], run_policy: Mapping[str, Any]
) -> Plan:
    """A finished job (Succeeded or Failed): cleanPodPolicy now, ttlSecondsAfterFinished
    when it comes."""
    _cleanup(ctx, list(current.values()), run_policy["cleanPodPolicy"])
    ttl = run_policy.get("ttlSecondsAfterFinished")
    finished = st.parse_time(ctx.status.get("completionTime"))
    if ttl is not None and finished is not None:
        left = (finished + timedelta(seconds=ttl) - ctx.now).total_seconds()
        if left <= 0:
            ctx.plan.delete_job = True
        else:
            ctx.plan.requeue(left)
    return ctx.done()


def _version_of(configmap: Mapping[str, Any] | None) -> int:
    text = ((configmap or {}).get("data") or {}).get(ranktable.VERSION_KEY, "0")
    return int(text) if str(text).isdigit() else 0


def _rank_table(
    ctx: _Ctx,
    job: Mapping[str, Any],
    current: Mapping[int, Mapping[str, Any]],
    configmap: Mapping[str, Any] | None,
) -> None:
    """Keep the rank-table ConfigMap equal to what the current rank pods imply."""
    pods = jobs.pod_count(job)
    annotated = {
        rank: pod
        for rank, pod in current.items()
        if st.is_scheduled(pod)
        and not st.is_deleting(pod)
        and ranktable.ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})
    }
    table: dict[str, Any] = ranktable.initializing_table()
    text = ranktable.dump(table)
    reason, message = "WaitingForDevices", f"{len(annotated)} of {pods} rank pods have their NPUs"
    if len(annotated) == pods:
        try:
            entries = ranktable.pods_from_annotations(
                [
                    ranktable.AnnotatedPod(
                        rank,
                        str(pod["metadata"].get("uid")),
                        str(pod["metadata"].get("name")),
                        pod["metadata"]["annotations"][ranktable.ANNOTATION],
                    )
                    for rank, pod in sorted(annotated.items())
                ],
                jobs.devices_per_pod(job),
            )
            built = ranktable.build_rank_table(entries)
            built_text = ranktable.dump(built)
            size = len(built_text.encode())
            if size > ranktable.MAX_CONFIGMAP_BYTES:
                reason = "RankTableTooLarge"
                message = (
                    f"spec.devices.perPod: the rank table of {pods} pods takes {size} bytes, "
                    "more than a ConfigMap holds: put several devices in each pod (perPod 8)"
                )
            else:
                table, text = built, built_text
                world = jobs.world_size(job)
                reason, message = "RankTableWritten", f"HCCL rank table of {world} ranks written"
        except ValueError as exc:  # RankTableError is a ValueError
            reason, message = "InvalidDeviceAnnotation", str(exc)
    complete = table["status"] == ranktable.STATUS_COMPLETED
    version = _version_of(configmap)
    # Compared as text: the table is written from this very text, so an unchanged pod set
    # writes nothing (and parsing a large table back every reconcile would cost more). The
    # attempt too: a whole-node table, keyed by host IPs, reads the same in a new attempt, and
    # only the attempt key tells its ranks that it is theirs.
    data = (configmap or {}).get("data") or {}
    attempt = int(ctx.status.get("restarts") or 0)
    if data.get(ranktable.FILE_KEY) != text or data.get(ranktable.ATTEMPT_KEY) != str(attempt):
        version += 1
        ctx.plan.configmap_data = ranktable.configmap_data(text, version, attempt)
        ctx.plan.ranktable_completed = complete
    ctx.status["rankTable"] = {"status": table["status"], "version": version}
    ctx.cond(st.RANKTABLE_READY, complete, reason, message)


def _rank_table_reset(
    ctx: _Ctx, job: Mapping[str, Any], configmap: Mapping[str, Any] | None
) -> None:
    if jobs.device_type(job) == "npu" and configmap is not None:
        _rank_table(ctx, job, {}, configmap)


def rejected(obj: Mapping[str, Any], message: str, now: datetime) -> Plan:
    """The job fails: the API server refused one of its children (e.g. a podTemplate that
    makes an invalid pod). Retrying would be refused the same way."""
    ctx = _Ctx(obj, now)
    if ctx.status.get("phase") != FAILED:
        ctx.fail("InvalidSpec", message)
    return ctx.done()


def plan(
    obj: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    service: Mapping[str, Any] | None,
    configmap: Mapping[str, Any] | None,
    now: datetime,
    settings: Settings,
    foreign_pods: int = 0,
    has_podgroup: bool = False,
    progress: Mapping[str, Any] | None = None,
) -> Plan:
    """The changes that bring the job `obj` (as read from the API) and its children in line.

    `pods` are the pods the job owns, `service`/`configmap` its headless Service and
    rank-table ConfigMap (None when missing), `has_podgroup` whether its PodGroup exists.
    `foreign_pods` counts pods with the job's label owned by something else: those of a
    deleted job of the same name, which the garbage collector has yet to remove and whose
    names the new pods need. `progress` is what rank 0's metrics said, when just scraped.
    """
    ctx = _Ctx(obj, now)
    status = ctx.status
    try:
        job = jobs.validate_job({k: obj.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except jobs.ManifestError as exc:
        # The schema cannot say everything (the batch must divide over the ranks...): such
        # a job fails for good, with the field in the message; no pod is ever created.
        if status.get("phase") != FAILED:
            ctx.fail("InvalidSpec", str(exc))
        return ctx.done()

    world = jobs.world_size(job)
    pod_total = jobs.pod_count(job)
    npu = jobs.device_type(job) == "npu"
    run_policy = job["spec"]["runPolicy"]
    restarts = int(status.get("restarts") or 0)
    status["restarts"] = restarts
    if progress:
        status["progress"] = dict(progress)

    current: dict[int, Mapping[str, Any]] = {}
    stale: list[Mapping[str, Any]] = []
    for pod in pods:
        rank = st.pod_rank(pod)
        if rank is None or rank >= pod_total or st.pod_restart(pod) != restarts or rank in current:
            stale.append(pod)
        else:
            current[rank] = pod
    status["ranks"] = st.rank_counts(current.values(), world, jobs.devices_per_pod(job))
    _delete(ctx, stale)

    if status.get("phase") in TERMINAL:
        return _finished(ctx, current, run_policy)

    # Children that must exist while the job is alive (re-created if someone deletes them).
    if service is None:
        ctx.plan.create.append(render.render_service(job))
    if render.gang(job) and not has_podgroup:
        # Before any pod: a pod naming a missing group is not scheduled by Volcano.
        ctx.plan.create.append(render.render_podgroup(job))
    if npu and configmap is None:
        created_cm = render.render_configmap(job, restarts)
        ctx.plan.create.append(created_cm)
        configmap = created_cm

    if run_policy["suspend"]:
        _delete(ctx, list(current.values()))
        ctx.clear(st.CREATED, "Suspended", "spec.runPolicy.suspend is true: rank pods deleted")
        ctx.clear(st.RUNNING, "Suspended", "spec.runPolicy.suspend is true")
        status["phase"] = SUSPENDED
        status.pop("startTime", None)
        _rank_table_reset(ctx, job, configmap)
        return ctx.done()

    started = st.parse_time(status.get("startTime"))
    deadline = run_policy.get("activeDeadlineSeconds")
    if deadline and started is not None:
        left = (started + timedelta(seconds=deadline) - now).total_seconds()
        if left <= 0:
            ctx.fail(
                "DeadlineExceeded",
                f"spec.runPolicy.activeDeadlineSeconds: the job ran longer than {deadline}s",
            )
            return _finished(ctx, current, run_policy)
        ctx.plan.requeue(left)

    created = ctx.is_true(st.CREATED)
    failures: list[st.Failure] = []
    for rank in range(pod_total):
        pod = current.get(rank)
        if pod is None:
            if created:
                name = jobs.pod_name(job, rank)
                failures.append(
                    st.Failure(rank, "PodDeleted", f"rank {rank} pod {name} disappeared", True)
                )
            continue
        failure = st.pod_failure(pod, rank)
        if failure is not None:
            failures.append(failure)

    permanent = [f for f in failures if not f.retryable]
    if permanent:
        ctx.fail(permanent[0].reason, permanent[0].message)
        return _finished(ctx, current, run_policy)
    if failures:
        # Name the rank that died, not one that merely lost it (the trainer's exit 134).
        first = min(failures, key=lambda f: f.exit_code == st.EXIT_LOST_PEER)
        limit = run_policy["backoffLimit"]
        if restarts >= limit:
            ctx.fail(
                "BackoffLimitExceeded",
                f"{first.message}; the job was restarted {restarts} times "
                f"(spec.runPolicy.backoffLimit {limit})",
            )
            return _finished(ctx, current, run_policy)
        # The status is written before the pods are deleted: if the operator dies in
        # between, the pods' restart label is already stale and they are deleted next time.
        restarts += 1
        status["restarts"] = restarts
        delay = backoff_delay(restarts, settings)
        ctx.cond(
            st.RESTARTING,
            True,
            first.reason,
            f"{first.message}: restarting all {world} ranks from the last checkpoint "
            f"(restart {restarts} of {limit}, in {delay:g}s)",
        )
        ctx.cond(st.CREATED, False, "Restarting", f"restart {restarts}: rank pods deleted")
        ctx.clear(st.RUNNING, "Restarting", first.message)
        ctx.clear(st.SCHEDULED, "Restarting", first.message)
        status["phase"] = RESTARTING
        _delete(ctx, list(current.values()))
        _rank_table_reset(ctx, job, configmap)
        ctx.plan.restarted = True
        ctx.plan.requeue(delay)
        return ctx.done()

    if len(current) == pod_total and all(st.pod_phase(p) == "Succeeded" for p in current.values()):
        message = f"all {world} ranks exited 0"
        ctx.cond(st.SUCCEEDED, True, "AllRanksSucceeded", message)
        ctx.clear(st.RUNNING, "Completed", message)
        ctx.clear(st.RESTARTING, "Completed", message)
        status["phase"] = SUCCEEDED
        status.setdefault("completionTime", st.format_time(now))
        return _finished(ctx, current, run_policy)

    if not created:
        if restarts and ctx.is_true(st.RESTARTING):
            since = st.parse_time(
                (st.get_condition(status["conditions"], st.RESTARTING) or {}).get(
                    "lastTransitionTime"
                )
            )
            left = backoff_delay(restarts, settings)
            if since is not None:
                left -= (now - since).total_seconds()
            if left > 0:
                status["phase"] = RESTARTING
                ctx.plan.requeue(left)
                return ctx.done()
        if stale or foreign_pods:
            # Pods of the previous attempt (or of a deleted namesake) hold the names (and
            # devices) the new ones need.
            status["phase"] = RESTARTING if restarts else CREATING
            ctx.plan.requeue(1.0)
            return ctx.done()
        for rank in range(pod_total):
            if rank not in current:
                ctx.plan.create.append(render.render_pod(job, rank, restarts))
        again = f" (restart {restarts})" if restarts else ""
        ctx.cond(st.CREATED, True, "PodsCreated", f"{pod_total} rank pods created{again}")
        if restarts:
            ctx.clear(st.RESTARTING, "Restarted", f"rank pods of restart {restarts} created")
        status.setdefault("startTime", st.format_time(now))
        status["phase"] = CREATING
        if npu:
            _rank_table(ctx, job, current, configmap)
        return ctx.done()

    counts = status["ranks"]
    scheduled = counts["scheduled"]
    if scheduled == world:
        ctx.cond(st.SCHEDULED, True, "AllRanksScheduled", f"{world} of {world} rank pods scheduled")
    else:
        message = f"{scheduled} of {world} rank pods scheduled"
        ctx.cond(st.SCHEDULED, False, "WaitingForScheduler", message)
    if npu:
        _rank_table(ctx, job, current, configmap)
    active = counts["running"] + counts["succeeded"]
    if active == world and counts["running"] > 0:
        ctx.cond(st.RUNNING, True, "AllRanksRunning", f"{counts['running']} ranks running")
        status["phase"] = RUNNING
    else:
        ctx.clear(st.RUNNING, "Waiting", f"{counts['running']} of {world} ranks running")
        status["phase"] = PENDING
    return ctx.done()
