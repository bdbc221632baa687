"""The reaper: no item stays ``running`` or ``queued`` for good after a fault.

Every worker's parent process runs one ``Reaper`` thread (Celery beat is not used). On each
tick the worker that takes the ``reaper`` lock in Redis (so one sweep runs at a time across
the fleet) does two sweeps:

1. Lapsed leases: the items of a task whose pool process stopped renewing their leases (the
   process or the whole worker died) are sent again as new tasks, running ones after going
   back to ``queued``.
2. Lost tasks: when no task waits in the broker, yet a job nothing touched for a lease period
   still has queued items that no live task holds, those items have no task (the API died
   between storing a job and sending it, a worker died with tasks it had reserved but not
   started, or a Redis crash lost a message): send them again.

Sending an item twice is harmless: tasks skip finished items and counters move once.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass

from celery import Celery

from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.queue import enqueue_items, tasks_waiting
from depthfleet.shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """What one tick did."""

    reclaimed: int = 0
    redispatched: int = 0


class Reaper:
    """A daemon thread in the worker's parent process; ``tick`` does one guarded sweep."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.interval = max(1.0, settings.lease_seconds / 3)
        self._store: JobStore | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> JobStore:
        """Connected on first use: in the reaper thread, once the worker consumes."""
        if self._store is None:
            self._store = JobStore(connect(self.settings.redis_url or ""),
                                   self.settings.job_ttl_days * 86400)
        return self._store

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep = self.tick()
            except Exception as exc:  # Redis or the broker restarting: the thread must live on
                log.warning("reaper: sweep failed (%s: %s); next tick retries",
                            type(exc).__name__, exc)
                continue
            if sweep.reclaimed:
                log.warning("reaper: resent %d items whose leases lapsed", sweep.reclaimed)
            if sweep.redispatched:
                log.warning("reaper: resent %d queued items that had no task", sweep.redispatched)

    def tick(self) -> Sweep:
        """One sweep, unless another worker's reaper swept within the last interval."""
        if self.store.acquire_lock("reaper", self.interval * 0.9) is None:
            return Sweep()
        return Sweep(reclaimed=self.reclaim_lapsed(), redispatched=self.redispatch_lost())

    def reclaim_lapsed(self) -> int:
        """Send items whose lease lapsed as new tasks (running ones go back to queued first)."""
        by_job: dict[str, list[int]] = defaultdict(list)
        for job_id, index in self.store.expired_leases():
            if self.store.reclaim_item(job_id, index):
                by_job[job_id].append(index)
        for job_id, indexes in by_job.items():
            enqueue_items(self.app, job_id, indexes, self.settings.items_per_task)
        return sum(map(len, by_job.values()))

    def redispatch_lost(self) -> int:
        """Resend queued items that no task holds, once the broker has nothing waiting."""
        if self.store.pending_items() <= 0 or tasks_waiting(self.app):
            return 0
        sent = 0
        for job_id in self.store.stale_jobs_with_queued_items(self.settings.lease_seconds):
            indexes = self.store.unleased_queued_indexes(job_id)
            enqueue_items(self.app, job_id, indexes, self.settings.items_per_task)
            sent += len(indexes)
        return sent
