"""Worker threads that reconcile jobs: observe -> policy.plan -> apply, with metrics.

One reconcile (`Controller.reconcile`): observe the job (gone: forget it) -> take the
progress the scraper found at rank 0 while it runs (scraper.py: in its own threads, so that
no reconcile waits on a job's pod) -> plan -> apply (a rejected child fails the job, a
refused one makes it wait) -> record metrics -> requeue for the next look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import metrics, policy, progress, recoveries
from . import status as st
from .kube import Kube, Refused, Rejected
from .scraper import Scraper
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

# After an unexpected error (API server unreachable, a conflict...) the job is looked at
# again after this long, doubling up to the resync period.
ERROR_BACKOFF_S = 1.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: policy.Settings,
        *,
        resync_seconds: float = 60.0,
        progress_seconds: float = 30.0,
        workers: int = 2,
        clock: Callable[[], datetime] = utcnow,
        scrape: Callable[[str], dict[str, Any] | None] = progress.scrape,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.resync_seconds = resync_seconds
        self.progress_seconds = progress_seconds
        self.queue = WorkQueue()
        # Progress found is shown at the job's next reconcile: right away.
        self.scraper = Scraper(progress_seconds, scrape=scrape, found=self.queue.add)
        self.clock = clock
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._errors: dict[tuple[str, str], int] = {}

    def start(self) -> None:
        if self.progress_seconds > 0:
            self.scraper.start()
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.queue.close()
        self.scraper.stop()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                self.reconcile(*key)  # type: ignore[misc]
            finally:
                self.queue.done(key)

    def reconcile(self, namespace: str, name: str) -> None:
        """One look at the job; never raises (a bad job or API error must not stop a worker)."""
        key = (namespace, name)
        started = time.perf_counter()
        try:
            observed = self.kube.observe(namespace, name)
            if observed is None:
                self._forget(key)
                return
            now = self.clock()
            found = self._progress(key, observed.job, observed.pods)
            plan = policy.plan(observed, now=now, settings=self.settings, progress=found)
            applied = self._apply(key, observed.job, plan, now)
            if applied is None:  # refused: requeued with the error backoff
                return
            self._errors.pop(key, None)
            _record_metrics(key, applied, now, observed.job.get("status") or {})
            self.queue.add_after(key, self._next_look(applied))
        except Exception:
            wait = self._retry_later(key)
            log.exception("job %s/%s: reconcile failed (retry in %gs)", namespace, name, wait)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _forget(self, key: tuple[str, str]) -> None:
        """The job is gone: a job made again under this name starts without its error
        backoff."""
        metrics.PHASES.forget(*key)
        self._errors.pop(key, None)
        self.scraper.watch(key, None)

    def _apply(
        self, key: tuple[str, str], job: dict[str, Any], plan: policy.Plan, now: datetime
    ) -> policy.Plan | None:
        """The plan applied: the one given, or the one that fails the job when the API
        server rejected a child; None when a child was refused for now."""
        try:
            self.kube.apply(job, plan, now)
        except Rejected as exc:
            log.warning("job %s/%s: %s", *key, exc)
            plan = policy.rejected(job, str(exc), now)
            self.kube.apply(job, plan, now)
        except Refused as exc:
            # Retried with the error backoff like any failed reconcile, but the job's
            # status says why it waits (else it would sit without a condition).
            log.warning("job %s/%s: %s", *key, exc)
            self.kube.apply(job, policy.refused(job, str(exc), now), now)
            self._retry_later(key)
            return None
        return plan

    def _next_look(self, plan: policy.Plan) -> float:
        """Seconds until the job is reconciled again, unless an event comes first."""
        wait = self.resync_seconds
        if plan.requeue_after is not None:
            wait = min(wait, plan.requeue_after)
        return wait

    def _retry_later(self, key: tuple[str, str]) -> float:
        """Requeue after a failed reconcile, doubling the delay; returns it."""
        failures = self._errors.get(key, 0) + 1
        self._errors[key] = failures
        wait = min(self.resync_seconds, ERROR_BACKOFF_S * 2 ** (failures - 1))
        self.queue.add_after(key, wait)
        return wait

    def _progress(
        self, key: tuple[str, str], job: dict[str, Any], pods: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """What the scraper found at rank 0 since the last look, while the job runs.

        Only the job's status says it runs (the pods may run before the rank table is
        complete); a job not running, or with progress off, is no longer scraped.
        """
        running = (job.get("status") or {}).get("phase") == policy.RUNNING
        url = progress.endpoint(job, pods) if running and self.progress_seconds > 0 else None
        self.scraper.watch(key, url)
        return self.scraper.take(key)


def _record_metrics(
    key: tuple[str, str], plan: policy.Plan, now: datetime, old_status: dict[str, Any]
) -> None:
    """The job's phase, a whole-job restart, the time its rank table took to complete, its
    goodput and the recoveries whose first step is new."""
    namespace, name = key
    metrics.PHASES.set(namespace, name, plan.status.get("phase"))
    if plan.status.get("goodput") is not None:
        metrics.GOODPUT.labels(namespace, name).set(plan.status["goodput"])
    for tier, seconds in recoveries.first_steps(old_status, plan.status):
        metrics.RECOVERY_SECONDS.labels(namespace, name, str(tier)).observe(seconds)
    if plan.restarted:
        metrics.RESTARTS.labels(namespace, name).inc()
        restarts = plan.status["restarts"]
        log.warning("job %s/%s: whole-job restart %s", namespace, name, restarts)
    if plan.ranktable_completed:
        created = st.get_condition(plan.status.get("conditions") or [], st.CREATED)
        since = st.parse_time((created or {}).get("lastTransitionTime"))
        if since is not None:
            metrics.RANKTABLE_SECONDS.observe(max((now - since).total_seconds(), 0.0))
