"""The cluster soak's invariants: each a named, pure check over one look at the cluster.

A check returns Findings; the Monitor turns a finding into a violation once it has held for
the check's grace period (what the operator's guarantee allows: it reacts at its next
reconcile, a deleted pod's processes get their grace period...). Checks with no grace must
never be seen false, not even for one poll.

What "live" means here: a pod is live while it is not being deleted (no deletionTimestamp)
and has not ended (phase Pending or Running); a rank process is live from its start until it
has exited (a process stopped by SIGSTOP is live: it still holds its rank's chips and port).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shufflenet_contract import ranktable
from shufflenet_operator import render
from shufflenet_operator import status as st

TERMINAL = ("Succeeded", "Failed")
# Reasons a job may wait for with no progress: it says why in a condition.
WAITING_REASONS = ("WaitingForScheduler", "PodsRefused", "WaitingForDevices")
RANK_IN_MESSAGE = re.compile(r"\brank \d+\b")


@dataclass(frozen=True)
class Finding:
    check: str
    job: str
    detail: str


@dataclass(frozen=True)
class RankProcess:
    """A live rank process of a pod the simulated kubelet started."""

    job: str
    rank: int
    attempt: int
    pod_uid: str
    pid: int


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def job_of(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(render.JOB_LABEL, ""))


def owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(o.get("uid")) for o in (obj.get("metadata") or {}).get("ownerReferences") or []}


def is_live(pod: Mapping[str, Any]) -> bool:
    return not st.is_deleting(pod) and st.pod_phase(pod) in ("Pending", "Running")


def phase(job: Mapping[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "")


def _conditions(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((job.get("status") or {}).get("conditions") or [])


# -- pods and processes ---------------------------------------------------------------------


def one_live_pod_per_rank(pods: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Never two live pods for the same rank index of a job."""
    counts = Counter((job_of(p), st.pod_rank(p)) for p in pods if is_live(p))
    return [
        Finding("one_live_pod_per_rank", job, f"{n} live pods for rank {rank}")
        for (job, rank), n in counts.items()
        if n > 1
    ]


def one_live_process_per_rank(procs: Iterable[RankProcess]) -> list[Finding]:
    """Never two live rank processes for the same rank of a job (an old attempt's process
    still running when the new attempt's starts: what two live pods would be on real
    nodes)."""
    by_rank: dict[tuple[str, int], list[RankProcess]] = defaultdict(list)
    for p in procs:
        by_rank[(p.job, p.rank)].append(p)
    return [
        Finding(
            "one_live_process_per_rank",
            job,
            f"rank {rank}: live processes of attempts {sorted(p.attempt for p in ps)} "
            f"(pids {sorted(p.pid for p in ps)})",
        )
        for (job, rank), ps in by_rank.items()
        if len(ps) > 1
    ]


def no_pods_while_suspended(
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    procs: Iterable[RankProcess],
) -> list[Finding]:
    """A suspended job has no live pods and no rank processes (after its grace period)."""
    suspended = {_name(j) for j in jobs if phase(j) == "Suspended"}
    out = [
        Finding("no_pods_while_suspended", job_of(p), f"pod {_name(p)} is live")
        for p in pods
        if job_of(p) in suspended and is_live(p)
    ]
    out += [
        Finding("no_pods_while_suspended", p.job, f"rank {p.rank} process {p.pid} runs")
        for p in procs
        if p.job in suspended
    ]
    return out


def cleanup_after_finish(
    jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> list[Finding]:
    """A finished job's pods go as its cleanPodPolicy says: All: none left; Running: none
    Pending or Running; None: all kept."""
    out = []
    finished = {_name(j): j for j in jobs if phase(j) in TERMINAL}
    for pod in pods:
        job = finished.get(job_of(pod))
        if job is None or st.is_deleting(pod):
            continue
        policy = job["spec"].get("runPolicy", {}).get("cleanPodPolicy", "Running")
        if policy == "All" or (policy == "Running" and is_live(pod)):
            out.append(
                Finding(
                    "cleanup_after_finish",
                    _name(job),
                    f"{phase(job)} with cleanPodPolicy {policy}: pod {_name(pod)} "
                    f"({st.pod_phase(pod)}) is still there",
                )
            )
    return out


def no_orphans_after_delete(
    deleted: Mapping[str, str], children: Iterable[Mapping[str, Any]]
) -> list[Finding]:
    """Nothing owned by a deleted job (uid -> name) stays (the garbage collector's part)."""
    out = []
    for child in children:
        for uid in owner_uids(child) & set(deleted):
            kind = child.get("kind") or "child"
            out.append(
                Finding("no_orphans_after_delete", deleted[uid], f"{kind} {_name(child)} left")
            )
    return out


# -- restarts and conditions ----------------------------------------------------------------


def restarts_within_backoff_limit(jobs: Sequence[Mapping[str, Any]]) -> list[Finding]:
    out = []
    for job in jobs:
        restarts = int((job.get("status") or {}).get("restarts") or 0)
        limit = job["spec"].get("runPolicy", {}).get("backoffLimit", 3)
        if isinstance(limit, int) and restarts > limit:
            out.append(
                Finding(
                    "restarts_within_backoff_limit",
                    _name(job),
                    f"restarts {restarts} > backoffLimit {limit}",
                )
            )
    return out


def terminal_phase_is_final(
    jobs: Sequence[Mapping[str, Any]], ended: Mapping[str, str]
) -> list[Finding]:
    """A job that ended stays as it ended (`ended`: name -> the terminal phase first seen),
    with one of Succeeded/Failed true, not both."""
    out = []
    for job in jobs:
        name, now = _name(job), phase(job)
        first = ended.get(name)
        if first is not None and now != first:
            out.append(Finding("terminal_phase_is_final", name, f"phase {first} became {now}"))
        conds = _conditions(job)
        if st.condition_true(conds, "Succeeded") and st.condition_true(conds, "Failed"):
            failed = st.get_condition(conds, "Failed") or {}
            out.append(
                Finding(
                    "terminal_phase_is_final",
                    name,
                    f"both Succeeded and Failed are True (Failed: {failed.get('reason')}: "
                    f"{failed.get('message')})",
                )
            )
    return out


def restart_reasons_name_the_rank(
    job: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> list[Finding]:
    """Every restart of the job has a Warning Event naming the rank that caused it."""
    restarts = int((job.get("status") or {}).get("restarts") or 0)
    messages = [str(e.get("message") or "") for e in events if (e.get("type") or "") == "Warning"]
    out = []
    for k in range(1, restarts + 1):
        mine = [m for m in messages if f"(restart {k} of " in m]
        if not mine:
            out.append(
                Finding("restart_reasons_name_the_rank", _name(job), f"restart {k}: no Event")
            )
        elif not any(RANK_IN_MESSAGE.search(m) for m in mine):
            out.append(
                Finding(
                    "restart_reasons_name_the_rank",
                    _name(job),
                    f"restart {k}: no rank named in {mine[0]!r}",
                )
            )
    return out


def explained_wait(job: Mapping[str, Any]) -> bool:
    """Whether a condition says why the job waits (scheduler, admission, devices), or
    status.waiting what the kubelet or the scheduler posted on its pods."""
    return (
        phase(job) == "Suspended"
        or bool((job.get("status") or {}).get("waiting"))
        or any(
            c.get("status") == "False" and c.get("reason") in WAITING_REASONS
            for c in _conditions(job)
        )
    )


def progress_key(job: Mapping[str, Any]) -> tuple[Any, ...]:
    """What changes while a job makes progress."""
    s = job.get("status") or {}
    ranks = s.get("ranks") or {}
    conds = tuple((c.get("type"), c.get("status"), c.get("reason")) for c in _conditions(job))
    return (s.get("phase"), s.get("restarts"), tuple(sorted(ranks.items())), conds)


def not_stalled(
    job: Mapping[str, Any], unchanged_s: float, stall_s: float, running_s: float
) -> list[Finding]:
    """A job that has not ended changes within `stall_s` seconds (or a condition says what it
    waits for); a Running one may run for `running_s` (its ranks' longest attempt)."""
    if phase(job) in TERMINAL or explained_wait(job):
        return []
    limit = running_s if phase(job) == "Running" else stall_s
    if unchanged_s <= limit:
        return []
    conds = ", ".join(
        f"{c.get('type')}={c.get('status')}/{c.get('reason')}" for c in _conditions(job)
    )
    return [
        Finding(
            "not_stalled",
            _name(job),
            f"phase {phase(job) or '(none)'} unchanged for {unchanged_s:.0f}s ({conds})",
        )
    ]


def ended_with_reason(job: Mapping[str, Any]) -> list[Finding]:
    """A finished job says how it ended: its Succeeded or Failed condition, with a reason."""
    p = phase(job)
    if p not in TERMINAL:
        return []
    cond = st.get_condition(_conditions(job), p)
    if cond is None or cond.get("status") != "True" or not cond.get("reason"):
        return [Finding("ended_with_reason", _name(job), f"phase {p} without a {p} condition")]
    return []


# -- rank tables ----------------------------------------------------------------------------


def table_of_own_attempt(
    job: str,
    attempt: int | None,
    table: Any,
    world: int,
    pods_of_attempt: set[str],
    where: str,
) -> list[Finding]:
    """A completed table given for `attempt` is complete (every rank once) and lists only pods
    of that attempt (`pods_of_attempt`: their UIDs)."""
    check = "rank_table_of_own_attempt"
    if not isinstance(table, dict) or table.get("status") != ranktable.STATUS_COMPLETED:
        return []
    try:
        ranktable.validate_rank_table(table, 0, world)
    except (ranktable.RankTableError, ValueError) as exc:
        return [Finding(check, job, f"{where}: not a complete table of {world} ranks: {exc}")]
    servers = [str(s.get("server_id")) for s in table.get("server_list", [])]
    foreign = [s for s in servers if s not in pods_of_attempt]
    if foreign:
        return [Finding(check, job, f"{where}: attempt {attempt} lists pods not of it: {foreign}")]
    return []


def rank_table_follows_pods(
    job: Mapping[str, Any], configmap: Mapping[str, Any] | None
) -> list[Finding]:
    """While every rank runs, the ConfigMap holds the completed table of the current attempt
    (a hand edit is put right at the next reconcile)."""
    if phase(job) != "Running" or job["spec"]["devices"].get("type") != "npu":
        return []
    restarts = int((job.get("status") or {}).get("restarts") or 0)
    data = (configmap or {}).get("data") or {}
    try:
        table = ranktable.parse(data.get(ranktable.FILE_KEY, ""))
    except ranktable.RankTableError:
        table = None
    status = table.get("status") if isinstance(table, dict) else None
    if configmap is None or status != ranktable.STATUS_COMPLETED:
        return [
            Finding("rank_table_follows_pods", _name(job), f"running, rank table status {status}")
        ]
    if data.get(ranktable.ATTEMPT_KEY) != str(restarts):
        return [
            Finding(
                "rank_table_follows_pods",
                _name(job),
                f"running attempt {restarts}, table of attempt {data.get(ranktable.ATTEMPT_KEY)}",
            )
        ]
    return []


# -- status and metrics ---------------------------------------------------------------------


def status_counts_match_pods(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], ranks_per_pod: int
) -> list[Finding]:
    """status.ranks of a job that has not ended equals what its current attempt's pods say."""
    s = job.get("status") or {}
    if phase(job) in TERMINAL or "ranks" not in s:
        return []
    restarts = int(s.get("restarts") or 0)
    mine = [p for p in pods if job_of(p) == _name(job) and st.pod_restart(p) == restarts]
    mine = [p for p in mine if not st.is_deleting(p)]
    want = st.rank_counts(mine, int(s["ranks"].get("total", 0)), ranks_per_pod)
    got = {k: s["ranks"].get(k) for k in want}
    if got != want:
        return [Finding("status_counts_match_pods", _name(job), f"status {got}, pods {want}")]
    return []


def metrics_match_statuses(
    namespace: str, jobs: Sequence[Mapping[str, Any]], samples: Mapping[tuple[str, ...], float]
) -> list[Finding]:
    """The operator's jobs-by-phase gauge counts the jobs' phases; its restart counter (since
    the operator started) never exceeds a job's status.restarts."""
    out = []
    phases = Counter(phase(j) or "Pending" for j in jobs)
    for (name, *labels), value in samples.items():
        if (
            name == "shufflenet_operator_jobs"
            and labels[0] == namespace
            and phases.get(labels[1], 0) != value
        ):
            out.append(
                Finding(
                    "metrics_match_statuses",
                    "*",
                    f"gauge jobs{{phase={labels[1]}}} {value:g}, statuses "
                    f"{phases.get(labels[1], 0)}",
                )
            )
    restarts = {_name(j): int((j.get("status") or {}).get("restarts") or 0) for j in jobs}
    for (name, *labels), value in samples.items():
        if name == "shufflenet_operator_job_restarts_total" and labels[1] == namespace:
            job = labels[0]
            if job in restarts and value > restarts[job]:
                out.append(
                    Finding(
                        "metrics_match_statuses",
                        job,
                        f"restarts counter {value:g} > status.restarts {restarts[job]}",
                    )
                )
    return out


# -- turning findings into violations -------------------------------------------------------

# Seconds a finding must hold before it is a violation; checks not listed have none.
GRACE_S: dict[str, float] = {
    "one_live_process_per_rank": 3.0,
    "no_pods_while_suspended": 25.0,
    "cleanup_after_finish": 25.0,
    # The garbage collector's own pace: after an API server restart it stops until its
    # resource discovery works again and its informers have synced (a 30-minute soak with
    # restarts every ~40 s saw children go more than 60 s after their job).
    "no_orphans_after_delete": 180.0,
    "rank_table_of_own_attempt": 5.0,
    "rank_table_follows_pods": 25.0,
    "status_counts_match_pods": 25.0,
    "metrics_match_statuses": 30.0,
}


@dataclass
class Violation:
    check: str
    job: str
    time: float  # seconds since the soak started, when first seen
    detail: str
    context: list[str] = field(default_factory=list)


class Monitor:
    """Findings over time -> violations (each check and job reported once)."""

    def __init__(self) -> None:
        self.since: dict[tuple[str, str], float] = {}
        self.violations: list[Violation] = []
        self.reported: set[tuple[str, str]] = set()

    def unavailable(self, seconds: float) -> None:
        """The API server was away for `seconds`: no one could act on a finding meanwhile,
        so that time does not count towards any grace period."""
        for key in self.since:
            self.since[key] += seconds

    def observe(
        self, findings: Iterable[Finding], now: float, checks: Iterable[str]
    ) -> list[Violation]:
        """The findings of one look at the checks named in `checks`; new violations."""
        checks = set(checks)
        seen = {(f.check, f.job): f for f in findings}
        for key in [k for k in self.since if k[0] in checks and k not in seen]:
            del self.since[key]
        new = []
        for key, f in seen.items():
            first = self.since.setdefault(key, now)
            if key in self.reported or now - first < GRACE_S.get(f.check, 0.0):
                continue
            self.reported.add(key)
            v = Violation(f.check, f.job, first, f.detail)
            self.violations.append(v)
            new.append(v)
        return new
