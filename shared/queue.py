"""Celery, configured in one place for both sides: the API sends tasks by name, workers run them.

Delivery is at-least-once: a task is acknowledged only after it finished (``acks_late``), a
task whose pool process died is requeued (``task_reject_on_worker_lost``), and a task held by
a worker that vanished returns to the queue after ``visibility_timeout`` (and the reaper,
``worker.reaper``, requeues its items once their leases lapse). Tasks are idempotent
(items in a terminal state are skipped, outputs have deterministic keys), so running one twice
is harmless. Celery's result backend is not used: job state lives in ``shared.jobs``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from depthfleet.shared.fairshare import TAIL_TASKS, FairShare, Release
from depthfleet.shared.jobs import JobStore
from depthfleet.shared.settings import Settings

QUEUE = "depthfleet"
INGEST_QUEUE = "depthfleet.ingest"  # its own queue: a big job's expansion never waits behind items
PROCESS_ITEMS = "depthfleet.process_items"
INGEST = "depthfleet.ingest"


def make_celery(settings: Settings) -> Celery:
    """The Celery app for ``settings``: broker on Redis, no result backend, late acks."""
    if not settings.redis_url:
        raise ValueError("DEPTHFLEET_REDIS_URL is not set")
    app = Celery("depthfleet", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit + 60,
        task_soft_time_limit=settings.task_time_limit,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Ride out a Redis restart while sending (the default gives up after about 0.6 s).
        task_publish_retry_policy={"max_retries": 10, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2.0},
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu sweeps for unacked messages of vanished workers only every interval x
            # throttle seconds (10 x 10 by default): make it one sweep per restore interval.
            "unacked_restore_interval": restore_interval(settings.visibility_timeout),
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 30,
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_soft_shutdown_timeout=30.0,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
    )
    return app


def restore_interval(visibility_timeout: int) -> int:
    """Seconds between sweeps that return unacked messages older than the visibility timeout."""
    return max(1, min(10, visibility_timeout // 5))


def tasks_waiting(app: Celery) -> bool:
    """Whether any DepthFleet task waits in the broker for a worker to take it."""
    from kombu.exceptions import ChannelError

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        for queue in (QUEUE, INGEST_QUEUE):
            try:
                if channel.queue_declare(queue=queue, passive=True).message_count:
                    return True
            except ChannelError:  # the queue's list does not exist: no message waits
                pass
    return False


def task_batches(indexes: list[int], per_task: int) -> list[list[int]]:
    """Items grouped ``per_task`` at a time, but the last ``TAIL_TASKS`` tasks' worth one by one.

    Grouping keeps per-task overhead small on bulk jobs; single items at the tail keep every
    worker busy to the end instead of one finishing a full group while the others idle.
    """
    tail = max(0, len(indexes) - TAIL_TASKS * per_task)
    head = [indexes[i:i + per_task] for i in range(0, tail, per_task)]
    return head + [[index] for index in indexes[len(head) * per_task:]]


def enqueue_items(app: Celery, job_id: str, indexes: list[int], per_task: int) -> int:
    """Send these items as tasks at once, outside any window (recovery and retries)."""
    batches = task_batches(indexes, per_task)
    _send(app, [([job_id, batch], {}) for batch in batches])
    return len(batches)


def _send(app: Celery, tasks: list[tuple[list[Any], dict[str, Any]]]) -> None:
    """``process_items`` tasks, (args, kwargs) each, over one producer connection."""
    if not tasks:
        return
    with app.producer_or_acquire() as producer:
        for args, kwargs in tasks:
            app.send_task(PROCESS_ITEMS, args=args, kwargs=kwargs, queue=QUEUE,
                          producer=producer)


def fair_share(store: JobStore, settings: Settings) -> FairShare:
    """The fair-share releaser for these settings (a task's token lapses well after any
    reasonable wait in the broker, so a lost task frees its slot without ever starving)."""
    return FairShare(store, settings.tenant_window, settings.items_per_task,
                     lapse_seconds=10 * settings.lease_seconds)


def dispatch(app: Celery, share: FairShare, tenant: str) -> int:
    """Release what the tenant's window has room for and send it; call only after the
    items are stored. Returns how many items were sent."""
    return send_released(app, share.release(tenant))


def send_released(app: Celery, releases: list[Release]) -> int:
    _send(app, [([r.job_id, r.indexes], {"token": r.token}) for r in releases])
    return sum(release.count for release in releases)


def enqueue_ingest(app: Celery, job_id: str, deferred: list[dict[str, str]]) -> None:
    """Ask a worker to expand bucket prefixes and archive objects into the job's items."""
    app.send_task(INGEST, args=[job_id, deferred], queue=INGEST_QUEUE)
