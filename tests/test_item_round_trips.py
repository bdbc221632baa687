"""Redis round trips of the worker's item flow (issue #14): counted, capped, and still exact.

The real ``depthfleet.process_items`` task (``worker.app``, with its observability signals)
runs in this process through Celery's ``apply``, on a real runtime: the job store on the
machine's Redis, folder storage, the stand-in model. A counter on the job store's client
counts the commands the task's thread sends (each one a round trip; the lease keeper's
thread is measured on its own). A task of 8 items against a task of 1 gives the cost per
item and per task. Before -> after issue #14:

  per item        computed 7 -> 5, reused result 4 -> 2, bad photo 6 -> 4,
                  cancelled job 2 -> 1, finished by an earlier delivery 2 -> 1
  per task        6 -> 5 (lease + job read, fair-share slot + release, job-finished check)
  lease renewal   one script per task whatever its size, plus one per render lock held,
                  every lease/3 (20 s by default): ~0.1 per item at 1 s per item

An item is one script at its start (cancel check, start, lease, record) and one at its end
(succeed or fail, with every counter). A computed result adds its render lock (taken,
released) and the model-run counter, which must move before the result is stored: a process
killed between storing it and finishing the item would otherwise leave a run uncounted.

The rest checks that the start script keeps the semantics the removed calls had. About 15 s
on 2 idle cores (30 s busy), most of it the stand-in checkpoint and the model's first load.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depthfleet.shared.jobs import JobStatus, JobStore, NewItem, connect
from depthfleet.worker import leases
from depthfleet.worker.runtime import Runtime
from support import tiny_jpeg

PER_TASK = 8  # the default items_per_task
PER_TASK_CEILING = 5
LEASE = 60.0
SEEDS = itertools.count()


@dataclass
class Counting:
    """Commands a Redis client sends, by thread: ``task`` (the main thread) or a thread name."""

    calls: collections.Counter[str] = field(default_factory=collections.Counter)

    def wrap(self, client: Any) -> None:
        send = client.execute_command  # every command and script call goes through it

        def counted(*args: Any, **options: Any) -> Any:
            thread = threading.current_thread()
            self.calls["task" if thread is threading.main_thread() else thread.name] += 1
            return send(*args, **options)

        client.execute_command = counted

    def take(self) -> int:
        """The main thread's commands since the last ``take``."""
        return self.calls.pop("task", 0)


@dataclass
class Worker:
    task: Any  # worker.app.process_items, the registered Celery task
    rt: Runtime
    counting: Counting
    tenant: str = "round-trips"

    @property
    def store(self) -> JobStore:
        return self.rt.store

    def job(self, photos: list[bytes]) -> str:
        """A job of these uploaded photos, stored as the API stores one."""
        items = []
        for data in photos:
            sha = hashlib.sha256(data).hexdigest()
            key = f"t/{self.tenant}/inputs/{sha}"
            self.rt.storage.put(key, data, "image/jpeg")
            items.append(NewItem(name=f"{sha[:8]}.jpg", source=key, sha256=sha, size=len(data)))
        return self.store.create_job(self.tenant, items, {}).job_id

    def run(self, job_id: str) -> int:
        """Commands one task (released by the fair share: it has a token) sends to process
        every item of the job."""
        total = self.store.status(job_id).total  # type: ignore[union-attr]
        self.counting.take()
        self.task.apply(args=[job_id, list(range(total))], kwargs={"token": f"{job_id}:0"}).get()
        return self.counting.take()


@pytest.fixture(scope="module")
def worker(redis_db_url: str, checkpoint_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The worker's task and a pool process's runtime, in this process."""
    root = tmp_path_factory.mktemp("round-trips")
    env = {"DEPTHFLEET_REDIS_URL": redis_db_url,
           "DEPTHFLEET_STORAGE_URL": (root / "storage").as_uri(),
           "DEPTHFLEET_WEIGHTS": str(checkpoint_path), "DEPTHFLEET_CACHE_DIR": str(root / "cache"),
           "DEPTHFLEET_METRICS_PORT": "0",
           "DEPTHFLEET_TENANT_WINDOW": "4"}  # auto adds a fleet read every 5 s per process
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        from depthfleet.worker import app, runtime  # reads the environment when imported

        assert app.settings.redis_url == redis_db_url, "worker.app was imported before"
        rt = runtime.init_runtime(app.settings, threads=1)
        counting = Counting()
        counting.wrap(rt.store.redis)
        worker = Worker(app.process_items, rt, counting)
        worker.run(worker.job(photos(1)))  # Redis learns the scripts (a one-off SCRIPT LOAD)
        try:
            yield worker
        finally:
            patch.setattr(runtime, "_runtime", None)


def photos(n: int) -> list[bytes]:
    """``n`` distinct small photos (no result to reuse)."""
    return [tiny_jpeg(next(SEEDS)) for _ in range(n)]


# -- the jobs a task meets, ``n`` items each --------------------------------------------
def computed(worker: Worker, n: int) -> str:
    return worker.job(photos(n))


def reused(worker: Worker, n: int) -> str:
    batch = photos(n)
    worker.run(worker.job(batch))
    return worker.job(batch)


def bad_photos(worker: Worker, n: int) -> str:
    return worker.job([b"not a photo %d" % next(SEEDS) for _ in range(n)])


def cancelled(worker: Worker, n: int) -> str:
    job_id = worker.job(photos(n))
    worker.store.cancel_job(job_id)
    return job_id


def finished_before(worker: Worker, n: int) -> str:
    """A redelivered task: an earlier delivery finished its items."""
    job_id = worker.job(photos(n))
    worker.run(job_id)
    return job_id


@dataclass(frozen=True)
class Case:
    prepare: Callable[[Worker, int], str]
    per_item: int  # the ceiling (issue #14)
    outcome: str  # the counter every item of the job ends in
    reused: bool = False


CASES = {
    "computed": Case(computed, 5, "succeeded"),
    "reused": Case(reused, 2, "succeeded", reused=True),
    "bad_photo": Case(bad_photos, 4, "failed"),
    "cancelled": Case(cancelled, 1, "cancelled"),
    "finished_before": Case(finished_before, 1, "succeeded"),
}


@pytest.mark.parametrize("name", CASES)
def test_round_trips_per_item_and_per_task_stay_within_the_ceiling(worker: Worker,
                                                                  name: str) -> None:
    case = CASES[name]
    one = worker.run(case.prepare(worker, 1))
    job_id = case.prepare(worker, PER_TASK)
    many = worker.run(job_id)
    per_item = (many - one) / (PER_TASK - 1)
    per_task = one - per_item
    status = worker.store.status(job_id)
    assert status is not None and status.pending == 0
    assert getattr(status, case.outcome) == PER_TASK, status
    assert status.reused == (PER_TASK if case.reused else 0), status
    assert per_item <= case.per_item, f"{name}: {per_item} round trips per item"
    assert per_task <= PER_TASK_CEILING, f"{name}: {per_task} round trips per task"


def test_lease_renewal_is_one_script_per_task_whatever_its_size(worker: Worker) -> None:
    keeper = leases.keeper(worker.store, LEASE)
    job_id = worker.job(photos(PER_TASK))
    with keeper.holding_items(job_id, list(range(PER_TASK))) as status:
        assert status is not None and status.total == PER_TASK
        before = worker.store.redis.zscore("df:leases", f"{job_id}:{PER_TASK - 1}")
        worker.counting.take()
        keeper.renew_all()
        assert worker.counting.take() == 1
        lock = worker.store.acquire_lock(f"round-trips:{job_id}", LEASE)
        assert lock is not None
        with keeper.holding_lock(lock):
            worker.counting.take()
            keeper.renew_all()
            assert worker.counting.take() == 2
    assert worker.store.redis.zscore("df:leases", f"{job_id}:{PER_TASK - 1}") > before


# -- the start script keeps the semantics of the calls it replaced --------------------------
@pytest.fixture()
def store(redis_db_url: str) -> JobStore:
    return JobStore(connect(redis_db_url), 3600)


@pytest.fixture()
def tenant() -> str:
    """A tenant of its own, so its pending count is this test's alone."""
    return f"t{uuid.uuid4().hex[:8]}"


def new_job(store: JobStore, tenant: str, n: int) -> str:
    items = [NewItem(name=f"{i}.jpg", source=f"t/{tenant}/inputs/{i}") for i in range(n)]
    return store.create_job(tenant, items, {}).job_id


def counts(store: JobStore, job_id: str) -> tuple[str, int, int, int, int]:
    status = store.status(job_id)
    assert isinstance(status, JobStatus)
    return status.status, status.pending, status.succeeded, status.failed, status.cancelled


def leased(store: JobStore, job_id: str) -> set[int]:
    return {index for job, index in store.expired_leases(now=float("inf")) if job == job_id}


def test_start_of_an_item_moves_it_leases_it_and_returns_its_record(store, tenant) -> None:
    job_id = new_job(store, tenant, 2)
    start = store.begin_item(job_id, 1, LEASE)
    assert start.item is not None and not start.cancelled
    assert (start.item["index"], start.item["status"], start.item["source"]) == \
        (1, "running", f"t/{tenant}/inputs/1")
    assert start.item["started_at"] > 0
    assert store.item(job_id, 1) == start.item
    assert leased(store, job_id) == {1}
    assert store.pending_items(tenant) == 2 and counts(store, job_id)[:2] == ("running", 2)


def test_a_cancelled_jobs_item_is_cancelled_at_its_start_and_counted_once(store,
                                                                         tenant) -> None:
    job_id = new_job(store, tenant, 2)
    # cancel_job raises the flag first, then cancels queued items: a task can start between
    store.redis.hset(store.job_key(job_id), "cancel_requested", 1)
    assert store.begin_item(job_id, 0, LEASE).cancelled
    assert store.begin_item(job_id, 0, LEASE).cancelled is False
    assert counts(store, job_id) == ("cancelled", 1, 0, 0, 1)
    store.cancel_job(job_id)  # the sweep finds item 1 queued and item 0 already cancelled
    assert store.begin_item(job_id, 1, LEASE) == store.begin_item(job_id, 0, LEASE)
    assert store.begin_item(job_id, 1, LEASE).item is None
    assert counts(store, job_id) == ("cancelled", 0, 0, 0, 2)
    assert store.pending_items(tenant) == 0 and leased(store, job_id) == set()


def test_a_cancel_leaves_a_running_item_to_its_task(store, tenant) -> None:
    """As before: only queued items are cancelled; a redelivery does not start it again."""
    job_id = new_job(store, tenant, 1)
    assert store.begin_item(job_id, 0, LEASE).item is not None
    store.cancel_job(job_id)
    start = store.begin_item(job_id, 0, LEASE)
    assert start.item is None and not start.cancelled
    assert store.succeed_item(job_id, 0, {"reused": False})
    assert counts(store, job_id) == ("cancelled", 0, 1, 0, 0)


def test_a_finished_item_is_never_started_again(store, tenant) -> None:
    job_id = new_job(store, tenant, 1)
    assert store.begin_item(job_id, 0, LEASE).item is not None
    assert store.succeed_item(job_id, 0, {"reused": True})
    again = store.begin_item(job_id, 0, LEASE)
    assert again.item is None and not again.cancelled
    assert store.item(job_id, 0)["status"] == "succeeded"
    assert counts(store, job_id) == ("succeeded", 0, 1, 0, 0)
    assert store.status(job_id).reused == 1 and leased(store, job_id) == set()


def test_fail_then_succeed_of_one_item_counts_once(store, tenant) -> None:
    job_id = new_job(store, tenant, 1)
    assert store.begin_item(job_id, 0, LEASE).item is not None
    assert store.fail_item(job_id, 0, "decode_failed", "not a photo", final=True)
    assert not store.succeed_item(job_id, 0, {"reused": False})
    assert not store.fail_item(job_id, 0, "decode_failed", "not a photo", final=True)
    assert counts(store, job_id) == ("failed", 0, 0, 1, 0)
    assert store.pending_items(tenant) == 0


def test_a_redelivered_running_item_starts_again_and_counts_once(store, tenant) -> None:
    job_id = new_job(store, tenant, 1)
    assert store.begin_item(job_id, 0, LEASE).item is not None
    assert store.begin_item(job_id, 0, LEASE).item is not None  # its first task died
    assert store.status(job_id).pending == 1 and store.pending_items(tenant) == 1
    assert store.succeed_item(job_id, 0, {"reused": False})
    assert counts(store, job_id) == ("succeeded", 0, 1, 0, 0)


def test_the_job_finishes_when_its_last_item_does(store, tenant) -> None:
    partial, succeeded = new_job(store, tenant, 2), new_job(store, tenant, 2)
    for job_id in (partial, succeeded):
        for index in (0, 1):
            assert store.begin_item(job_id, index, LEASE).item is not None
        assert store.succeed_item(job_id, 0, {"reused": False})
        assert counts(store, job_id) == ("running", 1, 1, 0, 0)
    assert store.fail_item(partial, 1, "decode_failed", "not a photo", final=True)
    assert store.succeed_item(succeeded, 1, {"reused": False})
    assert counts(store, partial) == ("partial", 0, 1, 1, 0)
    assert counts(store, succeeded) == ("succeeded", 0, 2, 0, 0)
    assert store.pending_items(tenant) == 0


def test_a_lapsed_start_lease_is_reclaimed_by_the_reaper(store, tenant) -> None:
    job_id = new_job(store, tenant, 1)
    assert store.begin_item(job_id, 0, lease_seconds=-1).item is not None
    assert (job_id, 0) in store.expired_leases()
    assert store.reclaim_item(job_id, 0)
    assert store.item(job_id, 0)["status"] == "queued"
    assert counts(store, job_id) == ("queued", 1, 0, 0, 0)


def test_a_tasks_first_step_leases_its_pending_items_and_reads_its_job(store,
                                                                       tenant) -> None:
    job_id = new_job(store, tenant, 3)
    assert store.begin_item(job_id, 0, LEASE).item is not None
    assert store.succeed_item(job_id, 0, {"reused": False})
    status = store.open_task(job_id, [0, 1, 2], LEASE)
    assert status == store.status(job_id) and status.tenant == tenant and status.total == 3
    assert leased(store, job_id) == {1, 2}
    assert store.open_task(uuid.uuid4().hex, [0], LEASE) is None
