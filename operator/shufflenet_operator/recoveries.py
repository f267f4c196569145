"""status.recoveries and status.goodput: what each recovery cost, and the share of wall time
the job spent training (pure functions over the status being written).

A recovery is one entry of `status.recoveries` (the last HISTORY kept): `tier` (1: the
training processes restarted in place inside the pods, told by rank 0's metrics; 3: the
whole job restarted by the operator), `cause`, `at` (the failure's time), `attempt` (the
whole-job attempt it happened in, tier 1, or started, tier 3) and seconds from the failure
to each milestone known: `detectSeconds` (the operator saw it: tier 3), `podsReadySeconds`
(every rank running again: tier 3), `rendezvousSeconds` and `checkpointLoadedSeconds`
(tier 1), `firstStepSeconds` (both). `stepsLost`: the steps rank 0 had done past the
checkpoint it resumed from, as last scraped before the failure: a lower bound, short by at
most one scrape interval of steps. A phase not known is left out.

Goodput: `status.trainingSeconds` sums the seconds rank 0's training processes spent in
training steps (`shufflenet_train_seconds_total`, one counter per process: a process seen for
the first time, by its start time, adds all it counted) over the wall time since
`status.startTime`. Steps run after a process's last scrape are not counted: goodput is a
lower bound by at most one scrape interval per recovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from . import render
from . import status as st

HISTORY = 10
TIER_IN_PLACE, TIER_JOB = 1, 3
# Scraped from rank 0 (progress.parse) for this module, next to status.progress' fields.
SCRAPED = ("trainSeconds", "processStart", "firstStepAt", "globalStep", "resumedStep", "recovery")


def failure_time(pod: Mapping[str, Any] | None) -> datetime | None:
    """When a failed rank pod's trainer container ended, as the kubelet posted it
    (`state.terminated.finishedAt`); None for a pod gone or ended without one."""
    for c in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if c.get("name") == render.CONTAINER:
            return st.parse_time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
    return None


def _seconds(since: datetime, until: datetime) -> float:
    return round(max((until - since).total_seconds(), 0.0), 3)


def _append(status: dict[str, Any], entry: dict[str, Any]) -> None:
    status["recoveries"] = [*(status.get("recoveries") or []), entry][-HISTORY:]


def job_restarted(
    status: dict[str, Any], cause: str, failed: datetime | None, now: datetime
) -> None:
    """A whole-job restart (tier 3) decided `now` for a failure seen at `failed`."""
    entry: dict[str, Any] = {
        "tier": TIER_JOB,
        "cause": cause,
        "at": st.format_time(failed or now),
        "attempt": int(status.get("restarts") or 0),
    }
    if failed is not None:
        entry["detectSeconds"] = _seconds(failed, now)
    _append(status, entry)


def _last_open(status: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The last whole-job restart of this attempt still missing `key`."""
    entries = status.get("recoveries") or []
    last = entries[-1] if entries else None
    attempt = int(status.get("restarts") or 0)
    if last and last.get("tier") == TIER_JOB and last.get("attempt") == attempt and key not in last:
        return last
    return None


def ranks_running(status: Mapping[str, Any], now: datetime) -> None:
    """Every rank of the attempt a whole-job restart started runs: its podsReadySeconds."""
    entry = _last_open(status, "podsReadySeconds")
    at = st.parse_time((entry or {}).get("at"))
    if entry is not None and at is not None:
        entry["podsReadySeconds"] = _seconds(at, now)


def goodput(training_seconds: float, started: datetime | None, now: datetime) -> float | None:
    """The share of wall time since `started` spent training, 0..1 (None before a start)."""
    if started is None:
        return None
    wall = (now - started).total_seconds()
    return round(min(max(training_seconds / wall, 0.0), 1.0), 4) if wall > 0 else 0.0


def scraped(status: dict[str, Any], found: Mapping[str, Any], now: datetime) -> None:
    """What rank 0's metrics page said: the training seconds, goodput, a restart in place
    it reports, the first step after a whole-job restart."""
    process = status.get("trainingProcess") or {}
    start = found.get("processStart")
    if start is None or "trainSeconds" not in found:
        return
    seconds = float(found["trainSeconds"])
    new = process.get("startedAt") != start
    added = seconds if new else max(seconds - float(process.get("trainSeconds") or 0.0), 0.0)
    total = round(float(status.get("trainingSeconds") or 0.0) + added, 3)
    status["trainingSeconds"] = total
    update_goodput(status, now)
    if new:
        _new_process(status, found)
    _first_step(status, found)
    status["trainingProcess"] = {
        "startedAt": start,
        "trainSeconds": seconds,
        **({"globalStep": int(found["globalStep"])} if "globalStep" in found else {}),
    }


def _new_process(status: dict[str, Any], found: Mapping[str, Any]) -> None:
    """A training process on rank 0 not seen before: after a restart in place, its entry;
    after a whole-job restart, that entry's checkpoint loaded and steps lost (the process
    that failed is still status.trainingProcess)."""
    recovery = found.get("recovery")
    if recovery:
        entry = in_place_entry(recovery, int(status.get("restarts") or 0))
        known = {(e.get("attempt"), e.get("generation")) for e in status.get("recoveries") or []}
        if (entry["attempt"], entry["generation"]) not in known:
            _add_steps_lost(status, entry, found.get("resumedStep"))
            _append(status, entry)
        return
    entry = _last_open(status, "checkpointLoadedSeconds")
    at = st.parse_time((entry or {}).get("at"))
    if entry is not None and at is not None:
        entry["checkpointLoadedSeconds"] = _seconds(at, _unix(found["processStart"]))
        _add_steps_lost(status, entry, found.get("resumedStep"))


def _first_step(status: dict[str, Any], found: Mapping[str, Any]) -> None:
    """The first step of the training process a whole-job restart started."""
    entry = _last_open(status, "firstStepSeconds")
    at = st.parse_time((entry or {}).get("at"))
    if entry is None or at is None or not found.get("firstStepAt"):
        return
    if _unix(found["processStart"]) >= at:  # not a late page of the process that failed
        entry["firstStepSeconds"] = _seconds(at, _unix(found["firstStepAt"]))


def _unix(seconds: Any) -> datetime:
    return datetime.fromtimestamp(float(seconds), timezone.utc)


def in_place_entry(recovery: Mapping[str, Any], attempt: int) -> dict[str, Any]:
    """status.recoveries' entry of a restart in place, from rank 0's recovery metrics."""
    at = _unix(recovery["failedAt"])
    entry: dict[str, Any] = {
        "tier": TIER_IN_PLACE,
        "cause": str(recovery.get("cause") or "unknown"),
        "at": st.format_time(at),
        "attempt": attempt,
        "generation": int(recovery["generation"]),
    }
    for key in ("rendezvousSeconds", "checkpointLoadedSeconds", "firstStepSeconds"):
        if recovery.get(key) is not None:
            entry[key] = round(float(recovery[key]), 3)
    return entry


def _add_steps_lost(status: Mapping[str, Any], entry: dict[str, Any], resumed: Any) -> None:
    """stepsLost: the last step scraped of the process that failed (status.trainingProcess)
    past the step the new one resumed from."""
    done = (status.get("trainingProcess") or {}).get("globalStep")
    if done is not None and resumed is not None:
        entry["stepsLost"] = max(int(done) - int(resumed), 0)


def update_goodput(status: dict[str, Any], now: datetime) -> None:
    """status.goodput as of `now` (a restart, the job's end): the training seconds so far
    over the wall time since its start; none while rank 0 was never scraped."""
    if "trainingSeconds" not in status:
        return
    share = goodput(
        float(status.get("trainingSeconds") or 0.0), st.parse_time(status.get("startTime")), now
    )
    if share is not None:
        status["goodput"] = share


def first_steps(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(tier, seconds to the first step) of the recoveries whose first step `new` is the
    first status to know: shufflenet_operator_recovery_seconds' observations."""

    def key(e: Mapping[str, Any]) -> tuple[Any, ...]:
        return e.get("tier"), e.get("at"), e.get("attempt"), e.get("generation")

    timed = {key(e) for e in old.get("recoveries") or [] if "firstStepSeconds" in e}
    return [
        (int(e["tier"]), float(e["firstStepSeconds"]))
        for e in new.get("recoveries") or []
        if "firstStepSeconds" in e and key(e) not in timed
    ]
