"""The one task: process a few items of a job. Small, idempotent, safe to run twice.

Each item moves queued -> running -> succeeded/failed through the job store, which ignores a
second finish of the same item, and its artifacts go to content-addressed keys, so a retried
or redelivered task overwrites what a first attempt wrote and counts nothing twice.

While a task runs, the leases of its items (and the render lock of the result being
computed) are renewed by the pool process's ``LeaseKeeper``; if the process dies, they lapse
and the reaper sends the items again.
A transient fault (storage or Redis unreachable) gives the item back to ``queued`` and retries
the task with backoff; only storage faults that outlast every retry fail items, retryably.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import redis
from celery import Task

from depthfleet.shared import layout
from depthfleet.shared.artifacts import ARTIFACTS, result_meta, stored_names, stored_outputs
from depthfleet.shared.errors import InputError
from depthfleet.shared.jobs import JobStatus
from depthfleet.shared.metrics import count_item, observe_stage
from depthfleet.shared.queue import dispatch
from depthfleet.shared.render import render
from depthfleet.shared.storage import ObjectMissing, StorageError
from depthfleet.worker import leases, observability
from depthfleet.worker.runtime import Runtime, runtime

log = logging.getLogger(__name__)

DEDUP_WAIT_SECONDS = 120.0
RECORD_FIELDS = ("width", "height", "depth_min", "depth_max", "artifacts")  # of meta.json
MAX_COUNTDOWN = 60
# Faults that pass: storage or the job store unreachable for a while. The task is retried.
TRANSIENT = (StorageError, redis.ConnectionError, redis.TimeoutError)


def process_items(task: Task, job_id: str, indexes: list[int],
                  token: str | None = None) -> dict[str, int]:
    """Process ``indexes`` of ``job_id``; transient faults retry the task with backoff.

    A task released by the fair share (``token``) releases its tenant's next one when it is
    done, here or after its last retry; while it waits for a retry it keeps its slot.
    """
    rt = runtime()
    try:
        with _keeper(rt).holding_items(job_id, indexes) as status:
            processed, tenant = _process_all(rt, job_id, indexes, status)
    except TRANSIENT as exc:
        return _retry_later(task, rt, job_id, indexes, exc, token)
    _release_next(rt, task, tenant, token)
    return {"processed": processed}


def _process_all(rt: Runtime, job_id: str, indexes: list[int],
                 status: JobStatus | None) -> tuple[int, str | None]:
    if status is None:
        log.warning("job %s no longer exists; dropping %d items", job_id, len(indexes))
        return 0, None
    processed = 0
    for index in indexes:
        processed += process_item(rt, job_id, index, status.tenant, status.options)
        rt.heap.after_photo()
    return processed, status.tenant


def _release_next(rt: Runtime, task: Task, tenant: str | None, token: str | None) -> None:
    """Free this task's slot in its tenant's window and send what fits in it now."""
    if tenant is None:
        return
    if token is not None:
        rt.share.finished(tenant, token)
    dispatch(task.app, rt.share, tenant)


def retry_countdown(retries: int, visibility_timeout: int) -> int:
    """Exponential backoff, capped below the visibility timeout: a task waiting for its ETA
    longer than that would be redelivered by the broker while it waits."""
    return max(1, min(MAX_COUNTDOWN, 2 ** retries, visibility_timeout // 2))


def _retry_later(task: Task, rt: Runtime, job_id: str, indexes: list[int],
                 exc: Exception, token: str | None) -> dict[str, int]:
    retries, limit = task.request.retries, rt.settings.storage_retries
    if retries >= limit:
        if not isinstance(exc, StorageError):
            raise exc  # the job store is gone for good: leases and the reaper take over
        _fail_unfinished(rt, job_id, indexes, exc, limit)
        status = rt.store.status(job_id)
        _release_next(rt, task, status.tenant if status else None, token)
        return {"processed": 0}
    countdown = retry_countdown(retries, rt.settings.visibility_timeout)
    with contextlib.suppress(*TRANSIENT):  # held through the countdown: the reaper waits
        rt.store.hold_items(job_id, indexes, countdown + rt.settings.lease_seconds)
    log.warning("job %s: transient fault (%s); retry %d of %d in %ss", job_id, exc,
                retries + 1, limit, countdown)
    raise task.retry(exc=exc, countdown=countdown, max_retries=limit) from exc


def process_item(rt: Runtime, job_id: str, index: int, tenant: str,
                 options: dict[str, Any]) -> int:
    """One item, start to finish; returns 1 if this call finished it."""
    with observability.item_scope(job_id, index, tenant):
        return _process_item(rt, job_id, index, tenant, options)


def _process_item(rt: Runtime, job_id: str, index: int, tenant: str,
                  options: dict[str, Any]) -> int:
    start = rt.store.begin_item(job_id, index, rt.settings.lease_seconds, rt.name)
    count_item("cancelled", start.cancelled)
    if start.item is None:
        return 0  # cancelled, or finished by an earlier delivery of this task
    observability.item_started()
    try:
        result = _produce(rt, tenant, start.item["source"], options)
    except InputError as exc:
        return int(count_item("failed", rt.store.fail_item(job_id, index, exc.code, exc.message,
                                                          final=True)))
    except TRANSIENT:
        with contextlib.suppress(*TRANSIENT):
            rt.store.release_item(job_id, index)  # back to queued: the task's retry takes it
        raise
    except Exception as exc:  # a bug or a machine fault: this item fails, retryable, the rest go on
        log.exception("job %s item %d: unexpected error", job_id, index)
        return int(count_item("failed", rt.store.fail_item(
            job_id, index, "internal_error", f"processing failed: {type(exc).__name__}",
            final=False)))
    finished = rt.store.succeed_item(job_id, index, result)
    if not finished:  # e.g. this host was cut off past its lease and the reaper resent it
        log.info("job %s item %d was finished elsewhere meanwhile; this result changes nothing",
                 job_id, index)
    return int(count_item("succeeded", finished))


def _keeper(rt: Runtime) -> leases.LeaseKeeper:
    return leases.keeper(rt.store, rt.settings.lease_seconds)


def _read_source(rt: Runtime, source: str) -> bytes:
    """An uploaded input (a storage key) or a photo already in a bucket (a source URL)."""
    try:
        with observe_stage("storage"):
            if "://" in source:
                return rt.sources.read(source, rt.settings.max_upload_bytes)
            return rt.storage.get(source)
    except ObjectMissing:
        raise InputError("source_missing", f"the input object {source!r} does not exist",
                         404) from None


def _produce(rt: Runtime, tenant: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    """Reuse the tenant's existing result for these bytes, or compute and store it.

    Stored: the compact set, plus the full-size and drawn artifacts ``options.outputs`` names;
    the API renders the other full-size ones on read from ``depth_raw``.
    """
    data = _read_source(rt, source)
    sha = hashlib.sha256(data).hexdigest()
    max_side = options.get("max_side")
    outputs = list(stored_outputs(options.get("outputs") or ()))
    prefix = layout.result_prefix(tenant, sha, layout.variant(
        rt.weights_sha256, max_side, stored_names(outputs, options)))
    meta, reused = _result_once(rt, data, prefix, outputs, options)
    return {**{field: meta[field] for field in RECORD_FIELDS}, "sha256": sha, "reused": reused}


def _result_once(rt: Runtime, data: bytes, prefix: str, outputs: list[str],
                 options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The stored result (reused), else one computed here under the prefix's render lock.

    While another process holds the lock we wait for its result; if the lock lapses without
    one (its holder died or failed), we take over. After ``DEDUP_WAIT_SECONDS`` we compute
    regardless, so a stuck holder never blocks an item for good.
    """
    deadline = time.monotonic() + DEDUP_WAIT_SECONDS
    while True:
        meta = _existing_result(rt, prefix, outputs)
        if meta is not None:
            return meta, True
        lock = rt.store.acquire_lock(f"render:{prefix}", rt.settings.lease_seconds)
        if lock is not None:
            with _keeper(rt).holding_lock(lock):
                meta = _existing_result(rt, prefix, outputs)  # finished while we asked?
                if meta is not None:
                    return meta, True
                return _compute(rt, data, prefix, outputs, options), False
        if time.monotonic() >= deadline:
            return _compute(rt, data, prefix, outputs, options), False
        while rt.store.lock_held(f"render:{prefix}") and time.monotonic() < deadline:
            time.sleep(0.2)


def _existing_result(rt: Runtime, prefix: str, outputs: list[str]) -> dict[str, Any] | None:
    """The stored result's metadata if it has every requested artifact."""
    try:
        with observe_stage("storage"):
            meta = json.loads(rt.storage.get(layout.result_meta_key(prefix)))
    except ObjectMissing:
        return None
    if not all(name in meta["artifacts"] for name in outputs):
        return None
    meta["artifacts"] = {n: meta["artifacts"][n] for n in outputs}
    return meta


def _compute(rt: Runtime, data: bytes, prefix: str, outputs: list[str],
             options: dict[str, Any]) -> dict[str, Any]:
    rendered = render(data, rt.estimator, outputs, options.get("max_side"),
                      rt.settings.max_pixels, options)
    rt.store.count_model_run()
    artifacts = {}
    with observe_stage("storage"):
        for name, blob in rendered.artifacts.items():
            key = layout.artifact_key(prefix, ARTIFACTS[name].filename)
            rt.storage.put(key, blob, ARTIFACTS[name].content_type)
            artifacts[name] = key
        meta = result_meta(rendered.raw, rendered.depth_min, rendered.depth_max, artifacts)
        rt.storage.put(layout.result_meta_key(prefix), json.dumps(meta).encode(),
                       "application/json")
    return meta


def _fail_unfinished(rt: Runtime, job_id: str, indexes: list[int], exc: StorageError,
                     retries: int) -> None:
    """Storage stayed down through every retry: fail the rest, retryable via POST .../retry."""
    for index in indexes:
        count_item("failed", rt.store.fail_item(
            job_id, index, "storage_unavailable",
            f"storage unreachable after {retries} retries: {exc.message}", final=False))
