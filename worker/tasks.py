"""The one task: process a few items of a job. Small, idempotent, safe to run twice.

Each item moves queued -> running -> succeeded/failed through the job store, which ignores a
second finish of the same item, and its artifacts go to content-addressed keys, so a retried
or redelivered task overwrites what a first attempt wrote and counts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from celery import Task

from depthfleet.shared import layout
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.encode import ARTIFACTS
from depthfleet.shared.render import render
from depthfleet.shared.storage import ObjectMissing, StorageError
from depthfleet.worker.runtime import Runtime, runtime

log = logging.getLogger(__name__)

STORAGE_RETRIES = 8
DEDUP_WAIT_SECONDS = 120.0


def process_items(task: Task, job_id: str, indexes: list[int]) -> dict[str, int]:
    """Process ``indexes`` of ``job_id``; storage faults retry the task with backoff."""
    rt = runtime()
    status = rt.store.status(job_id)
    if status is None:
        log.warning("job %s no longer exists; dropping %d items", job_id, len(indexes))
        return {"skipped": len(indexes)}
    done = 0
    try:
        for index in indexes:
            done += process_item(rt, job_id, index, status.tenant, status.options)
    except StorageError as exc:
        if task.request.retries >= STORAGE_RETRIES:
            _fail_unfinished(rt, job_id, indexes, exc)
            return {"processed": done}
        countdown = min(60, 2 ** task.request.retries)
        log.warning("job %s: storage fault (%s); retry %d in %ss", job_id, exc,
                    task.request.retries + 1, countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=STORAGE_RETRIES) from exc
    return {"processed": done}


def process_item(rt: Runtime, job_id: str, index: int, tenant: str,
                 options: dict[str, Any]) -> int:
    """One item, start to finish; returns 1 if this call finished it."""
    if rt.store.cancel_requested(job_id):
        rt.store.cancel_item(job_id, index)
        return 0
    lease = rt.settings.task_time_limit
    if not rt.store.start_item(job_id, index, lease):
        return 0  # already finished by an earlier delivery of this task
    item = rt.store.item(job_id, index) or {}
    try:
        result = _produce(rt, tenant, item["source"], options)
    except InputError as exc:
        return int(rt.store.fail_item(job_id, index, exc.code, exc.message, final=True))
    except StorageError:
        raise
    except Exception as exc:  # a bug or a machine fault: this item fails, retryable, the rest go on
        log.exception("job %s item %d: unexpected error", job_id, index)
        return int(rt.store.fail_item(job_id, index, "internal_error",
                                      f"processing failed: {type(exc).__name__}", final=False))
    return int(rt.store.succeed_item(job_id, index, result))


def _read_source(rt: Runtime, source: str) -> bytes:
    """An uploaded input (a storage key) or a photo already in a bucket (a source URL)."""
    try:
        return rt.sources.read(source) if "://" in source else rt.storage.get(source)
    except ObjectMissing:
        raise InputError("source_missing", f"the input object {source!r} does not exist",
                         404) from None


def _produce(rt: Runtime, tenant: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    """Reuse the tenant's existing result for these bytes, or compute and store it."""
    data = _read_source(rt, source)
    sha = hashlib.sha256(data).hexdigest()
    max_side = options.get("max_side")
    outputs = options.get("outputs") or list(ARTIFACTS)
    prefix = layout.result_prefix(tenant, sha, layout.variant(rt.weights_sha256, max_side))
    meta = _existing_result(rt, prefix, outputs)
    if meta is None:
        with rt.store.render_lock(f"{tenant}:{prefix}", DEDUP_WAIT_SECONDS) as owner:
            meta = None if owner else _existing_result(rt, prefix, outputs, wait=True)
            if meta is None:
                meta = _compute(rt, data, prefix, outputs, max_side)
                return {**meta, "sha256": sha, "reused": False}
    return {**meta, "sha256": sha, "reused": True}


def _existing_result(rt: Runtime, prefix: str, outputs: list[str],
                     wait: bool = False) -> dict[str, Any] | None:
    """The stored result's metadata if it has every requested artifact (optionally waiting for it)."""
    deadline = time.monotonic() + (DEDUP_WAIT_SECONDS if wait else 0)
    while True:
        try:
            meta = json.loads(rt.storage.get(layout.result_meta_key(prefix)))
        except ObjectMissing:
            meta = None
        if meta is not None and all(name in meta["artifacts"] for name in outputs):
            meta["artifacts"] = {n: meta["artifacts"][n] for n in outputs}
            return meta
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _compute(rt: Runtime, data: bytes, prefix: str, outputs: list[str],
             max_side: int | None) -> dict[str, Any]:
    rendered = render(data, rt.estimator, outputs, max_side, rt.settings.max_pixels)
    rt.store.count_model_run()
    artifacts = {}
    for name, blob in rendered.artifacts.items():
        key = layout.artifact_key(prefix, ARTIFACTS[name].filename)
        rt.storage.put(key, blob, ARTIFACTS[name].content_type)
        artifacts[name] = key
    meta = {**rendered.summary(), "artifacts": artifacts}
    rt.storage.put(layout.result_meta_key(prefix), json.dumps(meta).encode(), "application/json")
    return meta


def _fail_unfinished(rt: Runtime, job_id: str, indexes: list[int], exc: StorageError) -> None:
    """Storage stayed down through every retry: fail the rest, retryable via POST .../retry."""
    for index in indexes:
        rt.store.fail_item(job_id, index, "storage_unavailable",
                           f"storage unreachable after {STORAGE_RETRIES} retries: {exc.message}",
                           final=False)
