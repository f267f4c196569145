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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shufflenet_contract import exitcodes, ranktable
from shufflenet_contract import job as jobs

from . import render
from . import status as st

PENDING, CREATING, RUNNING = "Pending", "Creating", "Running"
RESTARTING, SUCCEEDED, FAILED, SUSPENDED = "Restarting", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)
CLEAN_POD_POLICIES = ("All", "Running", "None")


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


class Draft:
    """The plan being built for one job, and the status it will write."""

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


@dataclass
class Observed:
    """A valid job and what exists of it, as the steps of `plan` read it."""

    job: Mapping[str, Any]
    pods: Sequence[Mapping[str, Any]]  # all pods the job owns
    service: Mapping[str, Any] | None
    configmap: Mapping[str, Any] | None
    has_podgroup: bool
    foreign_pods: int
    settings: Settings
    # Filled by partition_pods: this attempt's pods by pod index, and all others.
    current: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    stale: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def world(self) -> int:
        return jobs.world_size(self.job)

    @property
    def pod_total(self) -> int:
        return jobs.pod_count(self.job)

    @property
    def npu(self) -> bool:
        return jobs.device_type(self.job) == "npu"

    @property
    def run_policy(self) -> Mapping[str, Any]:
        return self.job["spec"]["runPolicy"]


def _delete(draft: Draft, pods: Sequence[Mapping[str, Any]]) -> None:
    for pod in pods:
        if st.is_deleting(pod):
            continue
        meta = pod.get("metadata") or {}
        draft.plan.delete_pods.append((str(meta.get("name")), str(meta.get("uid"))))


def _cleanup(draft: Draft, pods: Sequence[Mapping[str, Any]], policy: str) -> None:
    """spec.runPolicy.cleanPodPolicy once the job has finished."""
    if policy == "All":
        _delete(draft, pods)
    elif policy == "Running":
        _delete(draft, [p for p in pods if st.pod_phase(p) in ("Pending", "Running", "Unknown")])


def _finished(
    draft: Draft, current: Mapping[int, Mapping[str, Any]], run_policy: Mapping[str, Any]
) -> Plan:
    """A finished job (Succeeded or Failed): cleanPodPolicy now, ttlSecondsAfterFinished
    when it comes."""
    _cleanup(draft, list(current.values()), run_policy["cleanPodPolicy"])
    ttl = run_policy.get("ttlSecondsAfterFinished")
    finished = st.parse_time(draft.status.get("completionTime"))
    if ttl is not None and finished is not None:
        left = (finished + timedelta(seconds=ttl) - draft.now).total_seconds()
        if left <= 0:
            draft.plan.delete_job = True
        else:
            draft.plan.requeue(left)
    return draft.done()


def _version_of(configmap: Mapping[str, Any] | None) -> int:
    text = ((configmap or {}).get("data") or {}).get(ranktable.VERSION_KEY, "0")
    return int(text) if str(text).isdigit() else 0


# Why the table stays initializing, by the annotation whose content blocks it.
_BLOCKED_BY = {ranktable.RANK_INDEX_ANNOTATION: "InvalidRankIndex"}


def _annotated_pods(
    job: Mapping[str, Any], current: Mapping[int, Mapping[str, Any]]
) -> list[ranktable.AnnotatedPod]:
    """The current rank pods that got their NPUs (scheduled, carrying the device plugin's
    annotation), with the rank index each will have in the table (RankTableError when its
    `hccl/rankIndex` disagrees with its index)."""
    resource = jobs.resource_name(job)
    out = []
    for index, pod in sorted(current.items()):
        meta = pod.get("metadata") or {}
        found = ranktable.device_annotation(meta.get("annotations"), resource)
        if found is None or not st.is_scheduled(pod) or st.is_deleting(pod):
            continue
        name = str(meta.get("name"))
        rank = ranktable.rank_index(meta.get("annotations"), index, name)
        out.append(ranktable.AnnotatedPod(rank, str(meta.get("uid")), name, found[1], found[0]))
    return out


def _rank_table(
    draft: Draft,
    job: Mapping[str, Any],
    current: Mapping[int, Mapping[str, Any]],
    configmap: Mapping[str, Any] | None,
) -> None:
    """Keep the rank-table ConfigMap equal to what the current rank pods imply."""
    pods = jobs.pod_count(job)
    table: dict[str, Any] = ranktable.initializing_table()
    text = ranktable.dump(table)
    try:
        annotated = _annotated_pods(job, current)
        reason = "WaitingForDevices"
        message = f"{len(annotated)} of {pods} rank pods have their NPUs"
        if len(annotated) == pods:
            entries = ranktable.pods_from_annotations(annotated, jobs.devices_per_pod(job))
            scheduling = job["spec"]["scheduling"]
            super_pod = ranktable.wants_super_pod(
                job["metadata"].get("annotations"), scheduling.get("nodeSelector")
            )
            built = ranktable.build_rank_table(entries, super_pod=super_pod)
            world = jobs.world_size(job)
            # What every rank will check before HCCL sees it: a table the ranks would refuse
            # is not written (the reason says why) rather than found wrong in each pod.
            ranktable.validate_rank_table(built, 0, world)
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
                reason = "RankTableWritten"
                message = f"HCCL rank table v{built['version']} of {world} ranks written"
    except ranktable.RankTableError as exc:
        reason, message = _BLOCKED_BY.get(exc.field, "InvalidDeviceAnnotation"), str(exc)
    except ValueError as exc:
        reason, message = "InvalidDeviceAnnotation", str(exc)
    complete = table["status"] == ranktable.STATUS_COMPLETED
    version = _version_of(configmap)
    # Compared as text: the table is written from this very text, so an unchanged pod set
    # writes nothing (and parsing a large table back every reconcile would cost more). The
    # attempt too: a whole-node table, keyed by host IPs, reads the same in a new attempt, and
    # only the attempt key tells its ranks that it is theirs.
    data = (configmap or {}).get("data") or {}
    attempt = int(draft.status.get("restarts") or 0)
    if data.get(ranktable.FILE_KEY) != text or data.get(ranktable.ATTEMPT_KEY) != str(attempt):
        version += 1
        draft.plan.configmap_data = ranktable.configmap_data(text, version, attempt)
        draft.plan.ranktable_completed = complete
    draft.status["rankTable"] = {"status": table["status"], "version": version}
    draft.cond(st.RANKTABLE_READY, complete, reason, message)


def _rank_table_reset(
    draft: Draft, job: Mapping[str, Any], configmap: Mapping[str, Any] | None
) -> None:
    if jobs.device_type(job) == "npu" and configmap is not None:
        _rank_table(draft, job, {}, configmap)


def _clean_pod_policy(obj: Mapping[str, Any]) -> str:
    """spec.runPolicy.cleanPodPolicy of a job that may not validate: its default (Running)
    unless it is set to one of the policies."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    run_policy = spec.get("runPolicy") if isinstance(spec.get("runPolicy"), dict) else {}
    value = run_policy.get("cleanPodPolicy")
    return value if value in CLEAN_POD_POLICIES else "Running"


def rejected(obj: Mapping[str, Any], message: str, now: datetime) -> Plan:
    """The job fails: the API server refused one of its children (e.g. a podTemplate that
    makes an invalid pod). Retrying would be refused the same way."""
    draft = Draft(obj, now)
    if draft.status.get("phase") != FAILED:
        draft.fail("InvalidSpec", message)
    return draft.done()


def refused(obj: Mapping[str, Any], message: str, now: datetime) -> Plan:
    """A child was refused for now (admission: a PriorityClass not there yet, a quota): the
    job waits for the cluster to change, and its status says why."""
    draft = Draft(obj, now)
    if draft.status.get("phase") not in TERMINAL:
        draft.cond(st.CREATED, False, "PodsRefused", message)
        draft.status.setdefault("phase", PENDING)
    return draft.done()


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

    The decision runs through STEPS in order; the first that returns a plan decides.
    """
    draft = Draft(obj, now)
    status = draft.status
    try:
        job = jobs.validate_job({k: obj.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except jobs.ManifestError as exc:
        # The schema cannot say everything (the batch must divide over the ranks...): such
        # a job fails for good, with the field in the message; no pod is ever created. A job
        # that has already ended keeps how it ended (a spec edited after the fact changes
        # no outcome), and the pods of a running job edited so stop as the job's
        # cleanPodPolicy says: they ran a spec the job no longer has.
        if status.get("phase") not in TERMINAL:
            draft.fail("InvalidSpec", str(exc))
        _cleanup(draft, pods, _clean_pod_policy(obj))
        return draft.done()
    status["restarts"] = int(status.get("restarts") or 0)
    if progress:
        status["progress"] = dict(progress)
    seen = Observed(job, pods, service, configmap, has_podgroup, foreign_pods, settings)
    for step in STEPS:
        decided = step(draft, seen)
        if decided is not None:
            return decided
    raise AssertionError("the last step always decides")


def partition_pods(draft: Draft, seen: Observed) -> Plan | None:
    """This attempt's pods by index; any other pod (an earlier attempt's, an index out of
    range, a duplicate, one the operator deleted itself) is stale and deleted."""
    restarts = draft.status["restarts"]
    # Pods of this attempt are created in the plan that sets Created; only the operator
    # clears it while the attempt stays (suspend). So a pod of this attempt being deleted
    # while Created is not True is one the operator deleted: no failure of the job, just a
    # pod to wait for before its name is reused.
    own_deletions = not draft.is_true(st.CREATED)
    for pod in seen.pods:
        index = st.pod_rank(pod)
        if (
            index is None
            or index >= seen.pod_total
            or st.pod_restart(pod) != restarts
            or index in seen.current
            or (own_deletions and st.is_deleting(pod))
        ):
            seen.stale.append(pod)
        else:
            seen.current[index] = pod
    # A finished job keeps the counts it ended with (as Kubeflow's training operator does):
    # cleanPodPolicy deletes the pods, which would otherwise report 0 succeeded.
    if draft.status.get("phase") not in TERMINAL:
        draft.status["ranks"] = st.rank_counts(
            seen.current.values(), seen.world, jobs.devices_per_pod(seen.job)
        )
    _delete(draft, seen.stale)
    return None


def finished(draft: Draft, seen: Observed) -> Plan | None:
    """A job that has ended stays ended: only clean-up and its TTL are left."""
    if draft.status.get("phase") in TERMINAL:
        return _finished(draft, seen.current, seen.run_policy)
    return None


def ensure_children(draft: Draft, seen: Observed) -> Plan | None:
    """Children that must exist while the job is alive (re-created if someone deletes them)."""
    job = seen.job
    if seen.service is None:
        draft.plan.create.append(render.render_service(job))
    if render.gang(job) and not seen.has_podgroup:
        # Before any pod: a pod naming a missing group is not scheduled by Volcano.
        draft.plan.create.append(render.render_podgroup(job))
    if seen.npu and seen.configmap is None:
        seen.configmap = render.render_configmap(job, draft.status["restarts"])
        draft.plan.create.append(seen.configmap)
    return None


def suspended(draft: Draft, seen: Observed) -> Plan | None:
    """spec.runPolicy.suspend: no pods, no start time (the deadline restarts on resume)."""
    if not seen.run_policy["suspend"]:
        draft.clear(st.SUSPENDED, "Resumed", "spec.runPolicy.suspend is false: the job runs again")
        return None
    _delete(draft, list(seen.current.values()))
    # A condition, as batch/v1 Jobs and Kubeflow's jobs have one: a job created suspended
    # would otherwise have none saying why nothing runs.
    draft.cond(st.SUSPENDED, True, "Suspended", "spec.runPolicy.suspend is true: no rank pods run")
    draft.clear(st.CREATED, "Suspended", "spec.runPolicy.suspend is true: rank pods deleted")
    draft.clear(st.RUNNING, "Suspended", "spec.runPolicy.suspend is true")
    draft.status["phase"] = SUSPENDED
    draft.status.pop("startTime", None)
    _rank_table_reset(draft, seen.job, seen.configmap)
    return draft.done()


def deadline(draft: Draft, seen: Observed) -> Plan | None:
    """spec.runPolicy.activeDeadlineSeconds, counted from startTime."""
    started = st.parse_time(draft.status.get("startTime"))
    seconds = seen.run_policy.get("activeDeadlineSeconds")
    if not seconds or started is None:
        return None
    left = (started + timedelta(seconds=seconds) - draft.now).total_seconds()
    if left > 0:
        draft.plan.requeue(left)
        return None
    draft.fail(
        "DeadlineExceeded",
        f"spec.runPolicy.activeDeadlineSeconds: the job ran longer than {seconds}s",
    )
    return _finished(draft, seen.current, seen.run_policy)


def _failures(draft: Draft, seen: Observed) -> list[st.Failure]:
    created = draft.is_true(st.CREATED)
    failures: list[st.Failure] = []
    for index in range(seen.pod_total):
        pod = seen.current.get(index)
        if pod is None:
            if created:  # all pods of this attempt were created: a missing one was deleted
                name = jobs.pod_name(seen.job, index)
                failures.append(
                    st.Failure(index, "PodDeleted", f"rank {index} pod {name} disappeared", True)
                )
            continue
        failure = st.pod_failure(pod, index)
        if failure is not None:
            failures.append(failure)
    return failures


def failures_and_backoff(draft: Draft, seen: Observed) -> Plan | None:
    """A permanent failure fails the job; a retryable one restarts every pod, after a
    doubling delay, up to spec.runPolicy.backoffLimit times."""
    failures = _failures(draft, seen)
    if not failures:
        return None
    status, run_policy = draft.status, seen.run_policy
    permanent = [f for f in failures if not f.retryable]
    if permanent:
        draft.fail(permanent[0].reason, permanent[0].message)
        return _finished(draft, seen.current, run_policy)
    # Name the rank that died, not one that merely lost it (the trainer's lost-peer exit).
    first = min(failures, key=lambda f: f.exit_code == exitcodes.EXIT_DIST)
    restarts, limit = status["restarts"], run_policy["backoffLimit"]
    if restarts >= limit:
        draft.fail(
            "BackoffLimitExceeded",
            f"{first.message}; the job was restarted {restarts} times "
            f"(spec.runPolicy.backoffLimit {limit})",
        )
        return _finished(draft, seen.current, run_policy)
    # The status is written before the pods are deleted: if the operator dies in
    # between, the pods' restart label is already stale and they are deleted next time.
    restarts += 1
    status["restarts"] = restarts
    delay = backoff_delay(restarts, seen.settings)
    draft.cond(
        st.RESTARTING,
        True,
        first.reason,
        f"{first.message}: restarting all {seen.world} ranks from the last checkpoint "
        f"(restart {restarts} of {limit}, in {delay:g}s)",
    )
    draft.cond(st.CREATED, False, "Restarting", f"restart {restarts}: rank pods deleted")
    draft.clear(st.RUNNING, "Restarting", first.message)
    draft.clear(st.SCHEDULED, "Restarting", first.message)
    status["phase"] = RESTARTING
    _delete(draft, list(seen.current.values()))
    _rank_table_reset(draft, seen.job, seen.configmap)
    draft.plan.restarted = True
    draft.plan.requeue(delay)
    return draft.done()


def succeeded(draft: Draft, seen: Observed) -> Plan | None:
    """Every pod of this attempt exited 0."""
    pods = seen.current.values()
    if len(seen.current) != seen.pod_total or any(st.pod_phase(p) != "Succeeded" for p in pods):
        return None
    message = f"all {seen.world} ranks exited 0"
    draft.cond(st.SUCCEEDED, True, "AllRanksSucceeded", message)
    draft.clear(st.RUNNING, "Completed", message)
    draft.clear(st.RESTARTING, "Completed", message)
    draft.status["phase"] = SUCCEEDED
    draft.status.setdefault("completionTime", st.format_time(draft.now))
    return _finished(draft, seen.current, seen.run_policy)


def _backoff_left(draft: Draft, seen: Observed) -> float:
    """Seconds still to wait before this restart's pods may be created."""
    restarts = draft.status["restarts"]
    if not restarts or not draft.is_true(st.RESTARTING):
        return 0.0
    restarting = st.get_condition(draft.status["conditions"], st.RESTARTING) or {}
    since = st.parse_time(restarting.get("lastTransitionTime"))
    left = backoff_delay(restarts, seen.settings)
    if since is not None:
        left -= (draft.now - since).total_seconds()
    return left


def create_pods(draft: Draft, seen: Observed) -> Plan | None:
    """The pods of this attempt, once the backoff has passed and the old pods are gone."""
    if draft.is_true(st.CREATED):
        return None
    status, restarts = draft.status, draft.status["restarts"]
    left = _backoff_left(draft, seen)
    if left > 0:
        status["phase"] = RESTARTING
        draft.plan.requeue(left)
        return draft.done()
    if seen.stale or seen.foreign_pods:
        # Pods of the previous attempt (or of a deleted namesake) hold the names (and
        # devices) the new ones need.
        status["phase"] = RESTARTING if restarts else CREATING
        draft.plan.requeue(1.0)
        return draft.done()
    for index in range(seen.pod_total):
        if index not in seen.current:
            draft.plan.create.append(render.render_pod(seen.job, index, restarts))
    again = f" (restart {restarts})" if restarts else ""
    draft.cond(st.CREATED, True, "PodsCreated", f"{seen.pod_total} rank pods created{again}")
    if restarts:
        draft.clear(st.RESTARTING, "Restarted", f"rank pods of restart {restarts} created")
    status.setdefault("startTime", st.format_time(draft.now))
    status["phase"] = CREATING
    if seen.npu:
        _rank_table(draft, seen.job, seen.current, seen.configmap)
    return draft.done()


def steady(draft: Draft, seen: Observed) -> Plan:
    """All pods exist and none failed: report scheduling, the rank table, running."""
    status, world = draft.status, seen.world
    counts = status["ranks"]
    scheduled = counts["scheduled"]
    if scheduled == world:
        draft.cond(
            st.SCHEDULED, True, "AllRanksScheduled", f"{world} of {world} rank pods scheduled"
        )
    else:
        message = f"{scheduled} of {world} rank pods scheduled"
        draft.cond(st.SCHEDULED, False, "WaitingForScheduler", message)
    if seen.npu:
        _rank_table(draft, seen.job, seen.current, seen.configmap)
    active = counts["running"] + counts["succeeded"]
    if active == world and counts["running"] > 0:
        draft.cond(st.RUNNING, True, "AllRanksRunning", f"{counts['running']} ranks running")
        status["phase"] = RUNNING
    else:
        draft.clear(st.RUNNING, "Waiting", f"{counts['running']} of {world} ranks running")
        status["phase"] = PENDING
    return draft.done()


# One reconcile's decision, step by step (Kubeflow's ReconcileJobs, Volcano's job states):
# each step either decides the plan or passes the job on to the next.
STEPS: tuple[Callable[[Draft, Observed], Plan | None], ...] = (
    partition_pods,
    finished,
    ensure_children,
    suspended,
    deadline,
    failures_and_backoff,
    succeeded,
    create_pods,
    steady,
)
