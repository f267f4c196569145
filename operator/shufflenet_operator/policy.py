"""Reconciliation decisions: job + observed children -> a plan of changes (pure functions).

`plan()` is level-based: it looks at the whole job (spec, status, rank pods, Service, rank
table ConfigMap) every time and says what to create, delete and write, so that running it
again after a crash, or twice for one event, does no harm. The only memory is the job's own
status: `restarts` (the current attempt; pods carry it as a label), the `Created` condition
(all pods of this attempt were created: a missing pod now means a deleted one), and the
`Restarting` condition's transition time (start of the backoff).

`plan()` first checks the job: its spec (`validate_job`) and what its rank pods would ask
for, against the operator's job policy (`job_policy`); a job failing either fails
InvalidSpec. Then it reads what `kube` observed (an `Observed`) through steps: the PREPARE
steps sort the pods into this attempt's and stale ones (`partition_pods`), force-delete pods
stuck Terminating on a NotReady node (`force_delete_stuck`) and, for a job still alive,
create its missing Service, PodGroup and rank-table ConfigMap (`ensure_children`); then the
DECIDE steps, in order, until one decides: `finished` (clean-up and TTL), `suspended`,
`deadline`, `failures_and_backoff` (fail, or restart every pod), `succeeded`,
`children_not_owned` (an object holding a child's name is not the job's: wait),
`create_pods` (after the backoff), `start_timeout` and `steady` (which also says why rank
pods wait, from what the kubelet and the scheduler posted on them: `status.job_waiting`).
What the rank-table ConfigMap says is decided in `ranktable_policy`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shufflenet_contract import exitcodes
from shufflenet_contract import job as jobs

from . import job_policy, quarantine, ranktable_policy, recoveries, render, trainer_images
from . import status as st
from .observed import Observed

PENDING, CREATING, RUNNING = "Pending", "Creating", "Running"
RESTARTING, SUCCEEDED, FAILED, SUSPENDED = "Restarting", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)
CLEAN_POD_POLICIES = ("All", "Running", "None")


@dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (command-line flags of shufflenet-operator)."""

    restart_backoff_seconds: float = 10.0  # delay before the first whole-job restart
    max_backoff_seconds: float = 300.0  # the doubling delay stops growing here
    # What a job may ask of its rank pods: a Pod Security level (job_policy.LEVELS).
    job_policy: str = job_policy.DEFAULT_LEVEL
    # The gid owning the NPU driver's device files on the nodes, when the image's group
    # (HwHiAiUser, 1000) is not it: added to NPU pods' supplementalGroups.
    npu_device_group: int | None = None
    # By device type, each rank's CPU and memory requests and /dev/shm size, where the
    # job's podTemplate sets none (render.RankResources).
    rank_resources: Mapping[str, render.RankResources] = field(
        default_factory=lambda: dict(render.RANK_RESOURCES)
    )
    # A rank pod no scheduler has looked at (no PodScheduled condition) this long after its
    # creation makes its job say SchedulerNotResponding: the default scheduler looks at a
    # new pod within a second, Volcano within its 1 s session period; a minute leaves room
    # for a busy one.
    scheduler_wait_seconds: float = 60.0
    # By device type, the image of a job that names none (spec.image; trainer_images).
    trainer_images: Mapping[str, str] = field(default_factory=dict)
    # Which nodes a restart keeps the next attempt off, for how long (quarantine.Rules).
    quarantine: quarantine.Rules = field(default_factory=quarantine.Rules)
    # A rank pod being deleted on a NotReady node is force-deleted (grace period 0) this
    # many seconds past its deletionTimestamp; < 0: never.
    terminating_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.job_policy not in job_policy.LEVELS:
            raise ValueError(
                f"job policy {self.job_policy!r}: one of {', '.join(job_policy.LEVELS)}"
            )


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
    force_delete_pods: list[tuple[str, str]] = field(default_factory=list)  # grace period 0
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
        # Every status written says how many whole-job restarts there were, 0 at first, also
        # when the first one written is a refusal (kubectl's Restarts column, the tests).
        self.status["restarts"] = int(old.get("restarts") or 0)
        # Why the rank pods have not started: only `steady` says it, from the pods as they
        # are now; any other decision (restart, suspend, the end) leaves none waiting.
        self.old_waiting = self.status.pop("waiting", None)
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

    @property
    def ended(self) -> bool:
        """Succeeded or Failed: as read, or as this plan decided."""
        return self.status.get("phase") in TERMINAL

    def fail(self, reason: str, message: str) -> None:
        self.cond(st.FAILED, True, reason, message)
        self.clear(st.RUNNING, reason, message)
        self.clear(st.RESTARTING, reason, message)
        self.status["phase"] = FAILED
        self.status.setdefault("completionTime", st.format_time(self.now))

    def done(self) -> Plan:
        self.plan.events = st.transition_events(self.old_conditions, self.status["conditions"])
        self.plan.events += st.waiting_events(self.old_waiting, self.status.get("waiting"))
        return self.plan


@dataclass
class Seen:
    """A valid job and what exists of it, as the steps of `plan` read it."""

    job: Mapping[str, Any]  # validated (defaults filled in)
    observed: Observed
    settings: Settings
    # As read, or the one ensure_children creates (its pods mount it).
    configmap: Mapping[str, Any] | None
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


def _name_uid(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("uid"))


def _delete(draft: Draft, pods: Sequence[Mapping[str, Any]]) -> None:
    draft.plan.delete_pods += [_name_uid(p) for p in pods if not st.is_deleting(p)]


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
    if finished is not None:  # over the whole run: the same at every later look
        recoveries.update_goodput(draft.status, finished)
    if ttl is not None and finished is not None:
        left = (finished + timedelta(seconds=ttl) - draft.now).total_seconds()
        if left <= 0:
            draft.plan.delete_job = True
        else:
            draft.plan.requeue(left)
    return draft.done()


def _rank_table(draft: Draft, seen: Seen, current: Mapping[int, Mapping[str, Any]]) -> None:
    """Keep the rank-table ConfigMap equal to what the `current` rank pods imply (never
    writing a ConfigMap of its name that is not the job's)."""
    if seen.observed.foreign("ConfigMap"):
        message = _not_owned_message(seen, ("ConfigMap",))
        draft.cond(st.RANKTABLE_READY, False, st.CHILD_NOT_OWNED, message)
        return
    table = ranktable_policy.decide(seen.job, current, seen.configmap, draft.status["restarts"])
    if table.configmap_data is not None:
        draft.plan.configmap_data = table.configmap_data
        draft.plan.ranktable_completed = table.complete
    draft.status["rankTable"] = {"status": table.status, "version": table.version}
    draft.cond(st.RANKTABLE_READY, table.complete, table.reason, table.message)


def _rank_table_reset(draft: Draft, seen: Seen) -> None:
    """Back to an initializing table: this attempt's pods are gone (or going)."""
    if seen.npu and seen.configmap is not None:
        _rank_table(draft, seen, {})


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
    if not draft.ended:
        draft.cond(st.CREATED, False, "PodsRefused", message)
        draft.status.setdefault("phase", PENDING)
    return draft.done()


def plan(
    observed: Observed,
    *,
    now: datetime,
    settings: Settings,
    progress: Mapping[str, Any] | None = None,
) -> Plan:
    """The changes that bring the job and its children, as `observed`, in line.

    `progress` is what rank 0's metrics said, when just scraped. The PREPARE steps run
    first, then the DECIDE steps in order: the first that returns a plan decides.
    """
    obj = observed.job
    draft = Draft(obj, now)
    status = draft.status
    try:
        job = jobs.validate_job({k: obj.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
        job = trainer_images.with_default(job, settings.trainer_images)
        job_policy.check(job, settings.job_policy, device_group=settings.npu_device_group)
    except jobs.ManifestError as exc:
        # The schema cannot say everything (the batch must divide over the ranks...), nor
        # what the admin lets jobs ask for (the job policy): such a job fails for good, with
        # the field in the message; no pod is ever created. A job that has already ended
        # keeps how it ended (a spec edited after the fact changes no outcome), and the pods
        # of a running job edited so (or refused by a policy made stricter since it started)
        # stop as the job's cleanPodPolicy says: they run what the job may no longer ask.
        if not draft.ended:
            draft.fail("InvalidSpec", str(exc))
        _cleanup(draft, observed.pods, _clean_pod_policy(obj))
        return draft.done()
    if progress:
        shown = {k: v for k, v in progress.items() if k not in recoveries.SCRAPED}
        if shown:
            status["progress"] = shown
        recoveries.scraped(status, progress, now)
    seen = Seen(job, observed, settings, observed.configmap)
    for prepare in PREPARE:
        prepare(draft, seen)
    for step in DECIDE:
        decided = step(draft, seen)
        if decided is not None:
            return decided
    raise AssertionError("the last step always decides")


def partition_pods(draft: Draft, seen: Seen) -> None:
    """This attempt's pods by index; any other pod (an earlier attempt's, an index out of
    range, a duplicate, one the operator deleted itself) is stale and deleted."""
    restarts = draft.status["restarts"]
    # Pods of this attempt are created in the plan that sets Created; only the operator
    # clears it while the attempt stays (suspend). So a pod of this attempt being deleted
    # while Created is not True is one the operator deleted: no failure of the job, just a
    # pod to wait for before its name is reused.
    own_deletions = not draft.is_true(st.CREATED)
    for pod in seen.observed.pods:
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
    if not draft.ended:
        draft.status["ranks"] = st.rank_counts(
            seen.current.values(), seen.world, jobs.devices_per_pod(seen.job)
        )
    _delete(draft, seen.stale)


def force_delete_stuck(draft: Draft, seen: Seen) -> None:
    """Rank pods stuck Terminating on a NotReady node: no kubelet confirms their deletion,
    and they would keep the next attempt's pods (same names) from being created forever
    (kubeflow/training-operator#2072). Past --terminating-timeout they go with grace 0."""
    due, left = quarantine.stuck_terminating(
        seen.observed.pods,
        seen.observed.nodes,
        now=draft.now,
        timeout=seen.settings.terminating_timeout_seconds,
    )
    draft.plan.force_delete_pods += [_name_uid(p) for p in due]
    if left is not None:
        draft.plan.requeue(left)


def finished(draft: Draft, seen: Seen) -> Plan | None:
    """A job that has ended stays ended: only clean-up and its TTL are left."""
    if draft.ended:
        return _finished(draft, seen.current, seen.run_policy)
    return None


def ensure_children(draft: Draft, seen: Seen) -> None:
    """Children that must exist while the job is alive (re-created if someone deletes them)."""
    if draft.ended:
        # Only cleaned up (`finished`): kube.observe does not even read its children.
        return
    job, observed = seen.job, seen.observed
    # An object of a child's name that is not the job's stays as it is (children_not_owned).
    if observed.service is None and not observed.foreign("Service"):
        draft.plan.create.append(render.render_service(job))
    if jobs.gang(job) and not observed.has_podgroup and not observed.foreign("PodGroup"):
        # Before any pod: a pod naming a missing group is not scheduled by Volcano.
        draft.plan.create.append(render.render_podgroup(job))
    if seen.npu and seen.configmap is None and not observed.foreign("ConfigMap"):
        seen.configmap = render.render_configmap(job, draft.status["restarts"])
        draft.plan.create.append(seen.configmap)


def suspended(draft: Draft, seen: Seen) -> Plan | None:
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
    _rank_table_reset(draft, seen)
    return draft.done()


def deadline(draft: Draft, seen: Seen) -> Plan | None:
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


def _failures(draft: Draft, seen: Seen) -> list[st.Failure]:
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


def failures_and_backoff(draft: Draft, seen: Seen) -> Plan | None:
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
    _blame(draft, seen, failures)
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
    failed = recoveries.failure_time(seen.current.get(first.rank))
    recoveries.job_restarted(status, f"{first.reason}: {first.message}", failed, draft.now)
    recoveries.update_goodput(status, draft.now)
    _delete(draft, list(seen.current.values()))
    _rank_table_reset(draft, seen)
    draft.plan.restarted = True
    draft.plan.requeue(delay)
    return draft.done()


def _blame(draft: Draft, seen: Seen, failures: Sequence[st.Failure]) -> None:
    """status.quarantine and status.failedNodes after this attempt's failures."""
    failed = []
    for f in failures:
        pod = seen.current.get(f.rank) or {}
        node = (pod.get("spec") or {}).get("nodeName")
        node_obj = seen.observed.nodes.get(node) if node else None
        failed.append(quarantine.Failed(node, f.exit_code, f.reason, node_obj))
    blamed, history = quarantine.blame(
        failed,
        draft.status.get("quarantine") or [],
        draft.status.get("failedNodes") or [],
        resource=jobs.resource_name(seen.job),
        now=draft.now,
        rules=seen.settings.quarantine,
    )
    for key, value in (("quarantine", blamed), ("failedNodes", history)):
        if value:
            draft.status[key] = value
        else:
            draft.status.pop(key, None)


def succeeded(draft: Draft, seen: Seen) -> Plan | None:
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
    _final_progress(draft, seen)
    return _finished(draft, seen.current, seen.run_policy)


def _final_progress(draft: Draft, seen: Seen) -> None:
    """Where a job that succeeded ended. No scrape can tell (rank 0's endpoint went with its
    process), and the last one is from before the end; but the trainer exits 0 only once it
    has trained spec.training.epochs (or found none left to train), so that is its epoch.
    imagesPerSecond and top1 stay as last scraped."""
    progress = dict(draft.status.get("progress") or {})
    progress["epoch"] = float(seen.job["spec"]["training"]["epochs"])
    draft.status["progress"] = progress


def _not_owned_message(seen: Seen, kinds: Sequence[str] | None = None) -> str:
    uid = seen.job["metadata"]["uid"]
    taken = [
        f"{kind} {name}"
        for kind, name in seen.observed.foreign_children
        if kinds is None or kind in kinds
    ]
    one = len(taken) == 1
    state, it = ("exists and is not", "it") if one else ("exist and are not", "them")
    return (
        f"{', '.join(taken)} already {state} this job's (no owner reference to its uid "
        f"{uid}): the operator leaves {it} alone; delete {it} or rename the job"
    )


def children_not_owned(draft: Draft, seen: Seen) -> Plan | None:
    """Objects that have the names of the job's children but are not the job's (another
    job's, or made by hand) are never adopted, changed or deleted: the job's pods are not
    created while one holds a name they need, and the job waits (looked at again at every
    resync) until it is gone. A running job carries on: its pods exist; only its rank table
    is not written (RankTableReady says why)."""
    if not seen.observed.foreign_children or draft.is_true(st.CREATED):
        return None
    draft.cond(st.CREATED, False, st.CHILD_NOT_OWNED, _not_owned_message(seen))
    draft.status["phase"] = RESTARTING if draft.status["restarts"] else PENDING
    return draft.done()


def _backoff_left(draft: Draft, seen: Seen) -> float:
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


def create_pods(draft: Draft, seen: Seen) -> Plan | None:
    """The pods of this attempt, once the backoff has passed and the old pods are gone."""
    if draft.is_true(st.CREATED):
        return None
    status, restarts = draft.status, draft.status["restarts"]
    left = _backoff_left(draft, seen)
    if left > 0:
        status["phase"] = RESTARTING
        draft.plan.requeue(left)
        return draft.done()
    if seen.stale or seen.observed.foreign_pods:
        # Pods of the previous attempt (or of a deleted namesake) hold the names (and
        # devices) the new ones need.
        status["phase"] = RESTARTING if restarts else CREATING
        draft.plan.requeue(1.0)
        return draft.done()
    keep_off = quarantine.active(status.get("quarantine"), draft.now)
    for index in range(seen.pod_total):
        if index not in seen.current:
            pod = render.render_pod(
                seen.job,
                index,
                restarts,
                device_group=seen.settings.npu_device_group,
                resources=seen.settings.rank_resources,
            )
            draft.plan.create.append(quarantine.avoid_nodes(pod, keep_off))
    again = f" (restart {restarts})" if restarts else ""
    draft.cond(st.CREATED, True, "PodsCreated", f"{seen.pod_total} rank pods created{again}")
    if restarts:
        draft.clear(st.RESTARTING, "Restarted", f"rank pods of restart {restarts} created")
    status.setdefault("startTime", st.format_time(draft.now))
    status["phase"] = CREATING
    if seen.npu:
        _rank_table(draft, seen, seen.current)
    return draft.done()


def _started(draft: Draft, seen: Seen) -> bool:
    """Every rank of this attempt runs (or has run to its end)."""
    counts = draft.status["ranks"]
    active = counts["running"] + counts["succeeded"]
    return active == seen.world and counts["running"] > 0


def start_timeout(draft: Draft, seen: Seen) -> Plan | None:
    """spec.runPolicy.startTimeoutSeconds: from this attempt's rank pods being created (the
    Created condition turning True) to all ranks running; scheduling and image pulls count.
    Past it the job fails, and its waiting pods go as cleanPodPolicy says."""
    seconds = seen.run_policy.get("startTimeoutSeconds")
    if not seconds or not draft.is_true(st.CREATED) or draft.is_true(st.RUNNING):
        return None
    if _started(draft, seen):
        return None
    created = st.get_condition(draft.status["conditions"], st.CREATED) or {}
    since = st.parse_time(created.get("lastTransitionTime"))
    if since is None:
        return None
    left = (since + timedelta(seconds=seconds) - draft.now).total_seconds()
    if left > 0:
        draft.plan.requeue(left)
        return None
    counts = draft.status["ranks"]
    kubelet, scheduler = st.job_waiting(
        seen.current, draft.now, seen.settings.scheduler_wait_seconds
    )
    why = kubelet or scheduler
    detail = f"; {why.reason}: {why.status()['message']}" if why else ""
    draft.fail(
        "StartTimeoutExceeded",
        f"spec.runPolicy.startTimeoutSeconds: {counts['running']} of {seen.world} ranks "
        f"running {seconds}s after the rank pods were created{detail}",
    )
    return _finished(draft, seen.current, seen.run_policy)


def _quarantined(why: st.Waiting, draft: Draft) -> st.Waiting:
    """The scheduler's trouble, saying which nodes the rank pods keep off (quarantine):
    a job that cannot fit on the others waits, and says so, until they are forgiven."""
    blamed = quarantine.describe(draft.status.get("quarantine"), draft.now)
    if not blamed:
        return why
    return dataclasses.replace(
        why,
        message=f"{why.message}; this attempt's rank pods keep off quarantined nodes: {blamed}",
    )


def steady(draft: Draft, seen: Seen) -> Plan:
    """All pods exist and none failed: report scheduling (or why the scheduler has not
    placed them), the rank table, running (or why the kubelet has not started them)."""
    status, world = draft.status, seen.world
    counts = status["ranks"]
    scheduled = counts["scheduled"]
    wait_s = seen.settings.scheduler_wait_seconds
    kubelet, scheduler = st.job_waiting(seen.current, draft.now, wait_s)
    if scheduled == world:
        draft.cond(
            st.SCHEDULED, True, "AllRanksScheduled", f"{world} of {world} rank pods scheduled"
        )
    else:
        message = f"{scheduled} of {world} rank pods scheduled"
        if scheduler is None:
            draft.cond(st.SCHEDULED, False, "WaitingForScheduler", message)
        else:
            scheduler = _quarantined(scheduler, draft)
            detail = scheduler.status()["message"]
            draft.cond(st.SCHEDULED, False, scheduler.reason, f"{message}; {detail}")
        left = st.scheduler_wait_left(seen.current.values(), draft.now, wait_s)
        if left is not None:
            draft.plan.requeue(left)
    if seen.npu:
        _rank_table(draft, seen, seen.current)
    running = f"{counts['running']} of {world} ranks running"
    if _started(draft, seen):
        draft.cond(st.RUNNING, True, "AllRanksRunning", f"{counts['running']} ranks running")
        status["phase"] = RUNNING
        recoveries.ranks_running(status, draft.now)
    elif kubelet is not None:
        draft.cond(st.RUNNING, False, kubelet.reason, f"{running}; {kubelet.status()['message']}")
        status["phase"] = PENDING
    else:
        draft.clear(st.RUNNING, "Waiting", running)
        status["phase"] = PENDING
    # The kubelet's trouble first: it needs the job's author (an image, a Secret), where
    # the scheduler's may pass as other jobs end.
    why = kubelet or scheduler
    if why is not None and status["phase"] == PENDING:
        status["waiting"] = why.status()
    return draft.done()


# One reconcile, step by step (Kubeflow's ReconcileJobs, Volcano's job states). PREPARE steps
# only add to the draft (pods sorted, stale ones deleted, missing children created) and run
# first, in order; then each DECIDE step either decides the plan or passes the job on.
PREPARE: tuple[Callable[[Draft, Seen], None], ...] = (
    partition_pods,
    force_delete_stuck,
    ensure_children,
)
DECIDE: tuple[Callable[[Draft, Seen], Plan | None], ...] = (
    finished,
    suspended,
    deadline,
    failures_and_backoff,
    succeeded,
    children_not_owned,
    create_pods,
    start_timeout,
    steady,
)
