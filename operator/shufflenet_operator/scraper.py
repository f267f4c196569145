"""Scrapes of running jobs' rank 0 metrics, in the background, off the reconcile workers.

A reconcile tells the scraper where a running job's rank 0 serves (`watch`) and takes the
progress found since (`take`): it never waits on the network, so a rank 0 that answers
slowly, or never stops answering, delays no job's reconcile. THREADS threads scrape the
jobs that are due, each scrape bounded by progress.DEADLINE_S and progress.MAX_BYTES; one
that found progress enqueues its job (`found`) so that its status shows it.

Pacing: a job is scraped when watched, then every `interval` seconds while it answers; an
endpoint that answers nothing is asked less and less often (`pause`), so that a cluster
whose network policy keeps the operator from the pods costs a few scrapes an hour per job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import progress

log = logging.getLogger(__name__)

Key = tuple[str, str]
Progress = dict[str, Any]

# Scrapes at once. A rank 0 that hangs holds one for DEADLINE_S, and then waits out its
# backoff: even every job hanging leaves THREADS / DEADLINE_S scrapes a second.
THREADS = 2
# The longest pause between scrapes of a job whose metrics endpoint does not answer.
MAX_BACKOFF_S = 600.0


def pause(interval: float, misses: int) -> float:
    """Seconds from one scrape's start to the next: `interval`, doubled for each scrape in a
    row that found nothing, up to ten intervals or MAX_BACKOFF_S (not below one interval)."""
    longest = max(min(MAX_BACKOFF_S, 10 * interval), interval)
    return min(interval * 2 ** min(misses, 32), longest)  # 2**misses unbounded would overflow


@dataclass
class _Entry:
    url: str
    due: float = 0.0  # the clock's time of its next scrape
    misses: int = 0  # scrapes in a row that found nothing
    busy: bool = False  # a scrape of it is under way
    found: Progress | None = None  # progress found, not yet taken


class Scraper:
    def __init__(
        self,
        interval: float,
        *,
        scrape: Callable[[str], Progress | None] = progress.scrape,
        found: Callable[[Key], None] = lambda key: None,
        threads: int = THREADS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.scrape = scrape
        self.found = found
        self.clock = clock
        self._threads_wanted = threads
        self._threads: list[threading.Thread] = []
        self._entries: dict[Key, _Entry] = {}
        self._cond = threading.Condition()
        self._closed = False

    def watch(self, key: Key, url: str | None) -> None:
        """Scrape the job's rank 0 at `url` from now on; None: no more (not running, gone)."""
        with self._cond:
            entry = self._entries.get(key)
            if url is None:
                self._entries.pop(key, None)
            elif entry is None or entry.url != url:
                # A rank 0 not seen before (a new job, or a new attempt's pod): at once.
                self._entries[key] = _Entry(url, due=self.clock())
                self._cond.notify()

    def take(self, key: Key) -> Progress | None:
        """The progress found since the last take, if any."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return None
            found, entry.found = entry.found, None
            return found

    def watched(self) -> list[Key]:
        with self._cond:
            return list(self._entries)

    def start(self) -> None:
        for i in range(self._threads_wanted):
            t = threading.Thread(target=self._run, name=f"progress-scrape-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """No more scrapes; waits for those under way, which end within their deadline."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=progress.DEADLINE_S + 5)
        self._threads.clear()

    def _run(self) -> None:
        while (claimed := self._claim()) is not None:
            key, entry = claimed
            started = self.clock()
            try:
                found = self.scrape(entry.url)
            except Exception:  # progress is informative: a scrape never stops a thread
                log.exception("progress: scraping %s failed", entry.url)
                found = None
            if self._record(key, entry, found, started):
                self.found(key)

    def _claim(self) -> tuple[Key, _Entry] | None:
        """The job due first, once due (marked busy); None once stopped.

        A scan of every watched job: there are as many as running jobs, and it runs once
        per scrape.
        """
        with self._cond:
            while not self._closed:
                idle = [(e.due, key) for key, e in self._entries.items() if not e.busy]
                wait = None
                if idle:
                    due, key = min(idle)
                    wait = due - self.clock()
                    if wait <= 0:
                        entry = self._entries[key]
                        entry.busy = True
                        return key, entry
                self._cond.wait(wait)
            return None

    def _record(self, key: Key, entry: _Entry, found: Progress | None, started: float) -> bool:
        """Keep what a scrape found and when the next is due; whether to tell the job."""
        with self._cond:
            entry.busy = False
            entry.misses = 0 if found else entry.misses + 1
            entry.due = started + pause(self.interval, entry.misses)
            if found:
                entry.found = found
            # Idle again: a thread waiting with nothing else to do must see it.
            self._cond.notify()
            # A job no longer watched (gone, finished, a new rank 0) keeps nothing.
            return bool(found) and self._entries.get(key) is entry and not self._closed
