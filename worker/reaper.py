"""The reaper: no item stays ``running`` or ``queued`` for good after a fault.

Every worker's parent process runs one ``Reaper`` thread (Celery beat is not used). On each
tick the worker that takes the ``reaper`` lock in Redis (so one sweep runs at a time across
the fleet) does two sweeps:

1. Lapsed leases: the items of a task whose pool process stopped renewing their leases (the
   process or the whole worker died, or its host was cut off) are sent again as new tasks,
   running ones after going back to ``queued``; the fair-share slots of their tasks are
   freed at once, so the hosts left keep busy.
2. Lost tasks: when no task waits in the broker, yet a job nothing touched for a lease period
   still has released, queued items that no live task holds, those items have no task (a
   worker died with tasks it had reserved but not started, or a Redis crash lost a message):
   send them again, and free the window slots their lost tasks held.
3. Fair share: release what each tenant's window has room for (a job stored by an API that
   died before sending anything; a window that grew because workers joined).
4. Renders on read (``cache/``), hourly: S3 gets a lifecycle rule that expires them after
   ``DEPTHFLEET_RENDER_CACHE_DAYS``; a storage folder has its old ones deleted.

Every tick, each worker also announces its pool size (the fair share's window follows the
live fleet).

Sending an item twice is harmless: tasks skip finished items and counters move once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from celery import Celery

from depthfleet.shared import layout
from depthfleet.shared.fairshare import FairShare
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.queue import dispatch, enqueue_items, fair_share, tasks_waiting
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import open_storage

log = logging.getLogger(__name__)
CACHE_SWEEP_SECONDS = 3600


@dataclass
class Sweep:
    """What one tick did."""

    reclaimed: int = 0
    redispatched: int = 0
    released: int = 0


class Reaper:
    """A daemon thread in the worker's parent process; ``tick`` does one guarded sweep."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.interval = max(1.0, settings.lease_seconds / 3)
        self._store: JobStore | None = None
        self._share: FairShare | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.processes = settings.concurrency or os.cpu_count() or 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_cache_sweep = 0.0

    @property
    def store(self) -> JobStore:
        """Connected on first use: in the reaper thread, once the worker consumes."""
        if self._store is None:
            self._store = JobStore(connect(self.settings.redis_url or ""),
                                   self.settings.job_ttl_days * 86400)
        return self._store

    @property
    def share(self) -> FairShare:
        if self._share is None:
            self._share = fair_share(self.store, self.settings)
        return self._share

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.share.leave(self.name)
        except Exception as exc:  # Redis down at shutdown: the heartbeat lapses by itself
            log.info("reaper: could not leave the fleet (%s)", exc)

    def _run(self) -> None:
        while True:
            try:
                self.share.heartbeat(self.name, self.processes, 3 * self.interval)
                self._report(self.tick())
            except Exception as exc:  # Redis or the broker restarting: the thread must live on
                log.warning("reaper: sweep failed (%s: %s); next tick retries",
                            type(exc).__name__, exc)
            if self._stop.wait(self.interval):
                return

    @staticmethod
    def _report(sweep: Sweep) -> None:
        if sweep.reclaimed:
            log.warning("reaper: resent %d items whose leases lapsed", sweep.reclaimed)
        if sweep.redispatched:
            log.warning("reaper: resent %d queued items that had no task", sweep.redispatched)

    def tick(self) -> Sweep:
        """One sweep, unless another worker's reaper swept within the last interval."""
        if self.store.acquire_lock("reaper", self.interval * 0.9) is None:
            return Sweep()
        sweep = Sweep(reclaimed=self.reclaim_lapsed(), redispatched=self.redispatch_lost(),
                      released=self.release_windows())
        self.expire_renders()
        return sweep

    def expire_renders(self) -> None:
        """Hourly (per reaper): expire renders on read older than the cache's lifetime."""
        if time.monotonic() < self._next_cache_sweep or not self.settings.storage_url:
            return
        self._next_cache_sweep = time.monotonic() + CACHE_SWEEP_SECONDS
        open_storage(self.settings).expire_prefix(layout.CACHE_PREFIX,
                                                  self.settings.render_cache_days)

    def reclaim_lapsed(self) -> int:
        """Send items whose lease lapsed as new tasks (running ones go back to queued first)."""
        by_job: dict[str, list[int]] = defaultdict(list)
        for job_id, index in self.store.expired_leases():
            if self.store.reclaim_item(job_id, index):
                by_job[job_id].append(index)
        for job_id, indexes in by_job.items():
            enqueue_items(self.app, job_id, indexes, self.settings.items_per_task)
            status = self.store.status(job_id)
            if status is not None:  # their tasks' window slots go with them
                self.share.forget_tasks(status.tenant, job_id, indexes)
        return sum(map(len, by_job.values()))

    def redispatch_lost(self) -> int:
        """Resend queued items that no task holds, once the broker has nothing waiting."""
        if self.store.pending_items() <= 0 or tasks_waiting(self.app):
            return 0
        sent = 0
        for job_id in self.store.stale_jobs_with_queued_items(self.settings.lease_seconds):
            released = self.store.released(job_id)
            indexes = [i for i in self.store.unleased_queued_indexes(job_id) if i < released]
            enqueue_items(self.app, job_id, indexes, self.settings.items_per_task)
            sent += len(indexes)
            status = self.store.status(job_id)
            if status is not None:  # its tasks are gone: free their slots, release the rest
                self.share.forget_job(status.tenant, job_id)
                self.share.add_job(status.tenant, job_id)
                sent += dispatch(self.app, self.share, status.tenant)
        return sent

    def release_windows(self) -> int:
        """Top up every tenant's window (normally finishing tasks do this themselves)."""
        return sum(dispatch(self.app, self.share, tenant) for tenant in self.share.tenants())
