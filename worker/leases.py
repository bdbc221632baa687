"""Keeping alive what a pool process holds while it works: its task's items and render locks.

Item leases (``df:leases``) and render locks both lapse ``lease_seconds`` after their last
renewal. One daemon thread per pool process renews everything the process holds three times
per lease period, so only a process that died (SIGKILL, OOM, a lost machine) lets them lapse;
the reaper then sends its items again (``worker.reaper``) and others may take its locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from depthfleet.shared.jobs import JobStatus, JobStore, Lock

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases and locks registered with it from one background thread."""

    def __init__(self, store: JobStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._tasks: dict[object, tuple[str, list[int]]] = {}
        self._locks: set[Lock] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding_items(self, job_id: str, indexes: list[int]) -> Iterator[JobStatus | None]:
        """Lease the task's pending items now and keep them leased while the block runs.

        Yields the job's status, read in the same round trip as the lease (None: it is gone).
        """
        status = self.store.open_task(job_id, indexes, self.lease_seconds)
        self._ensure_thread()
        key = object()
        with self._guard:
            self._tasks[key] = (job_id, indexes)
        try:
            yield status
        finally:
            with self._guard:
                self._tasks.pop(key, None)

    @contextmanager
    def holding_lock(self, lock: Lock) -> Iterator[None]:
        """Renew ``lock`` while the block runs, release it afterwards."""
        self._ensure_thread()
        with self._guard:
            self._locks.add(lock)
        try:
            yield
        finally:
            with self._guard:
                self._locks.discard(lock)
            lock.release()

    def renew_all(self) -> None:
        with self._guard:
            tasks, locks = list(self._tasks.values()), list(self._locks)
        for job_id, indexes in tasks:
            self.store.hold_items(job_id, indexes, self.lease_seconds)
        for lock in locks:
            if not lock.renew():
                log.warning("lock %s lapsed before it could be renewed", lock.key)

    def _ensure_thread(self) -> None:
        """Started on first use, i.e. in the pool process after the fork, never in the parent."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            time.sleep(interval)
            try:
                self.renew_all()
            except redis.RedisError as exc:  # Redis restarting: the next round tries again
                log.warning("lease renewal failed: %s", exc)


_keeper: LeaseKeeper | None = None


def keeper(store: JobStore, lease_seconds: float) -> LeaseKeeper:
    """This process's keeper (one per pool process)."""
    global _keeper
    if _keeper is None:
        _keeper = LeaseKeeper(store, lease_seconds)
    return _keeper
