"""Expanding what is too big for a request: bucket prefixes and archives.

Runs in a worker, appends items to the job a chunk at a time and releases their tasks (in
turn with the tenant's other work, ``shared.fairshare``) right after each chunk is stored. A
cursor saved with every chunk makes it safe to run again after a worker died or the run was
paused: it continues after the last stored item, so no item is added twice or lost.

However it ends, the job stops ``ingesting``: a source that cannot be read, or a failure of
the expansion itself, becomes a failed item that says why.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from depthfleet.shared import ingest
from depthfleet.shared.errors import InputError
from depthfleet.shared.jobs import WRITE_CHUNK, JobStatus, NewItem, chunked
from depthfleet.shared.queue import dispatch
from depthfleet.shared.storage import ObjectMissing, StorageError
from depthfleet.worker.runtime import Runtime

log = logging.getLogger(__name__)

SPOOL_BYTES = 8 << 20  # archives larger than this are spooled to disk, never held in memory
QUOTA_PAUSE_SECONDS = 15


class Paused(Exception):
    """Ingestion stops for now and continues from its cursor in ``seconds``."""

    def __init__(self, seconds: float, why: str) -> None:
        super().__init__(why)
        self.seconds = seconds


def ingest_sources(rt: Runtime, app: Celery, job_id: str, deferred: list[dict[str, str]]) -> int:
    """Append the items of every deferred source; returns how many this run added.

    Raises ``Paused`` when the tenant is at its quota or the task's time is up, and
    ``StorageError`` for a storage fault worth retrying; anything else ends the ingestion
    with a failed item giving the reason.
    """
    status = rt.store.status(job_id)
    if status is None:
        return 0
    try:
        added = _ingest_all(rt, app, status, deferred)
    except SoftTimeLimitExceeded:
        raise Paused(0, "the task's time limit is near; continuing from the cursor") from None
    except (Paused, StorageError):
        raise
    except Exception as exc:  # a bug or a machine fault must not leave the job ingesting
        log.exception("job %s: ingestion failed", job_id)
        fail_ingestion(rt, app, status, f"ingestion failed: {type(exc).__name__}: {exc}")
        return 0
    _finish(rt, app, status)
    return added


def fail_ingestion(rt: Runtime, app: Celery, status: JobStatus, message: str) -> None:
    """End the ingestion with one failed item saying why (retries are exhausted, or a bug)."""
    error = InputError("ingest_failed", message[:500])
    rt.store.append_items(status.id, [ingest.failed("(ingestion)", error)])
    _finish(rt, app, status)


def _finish(rt: Runtime, app: Celery, status: JobStatus) -> None:
    rt.store.finish_ingest(status.id)
    dispatch(app, rt.share, status.tenant)  # releases the tail, and drops the job from the ring


def _ingest_all(rt: Runtime, app: Celery, status: JobStatus,
                deferred: list[dict[str, str]]) -> int:
    start_source, start_offset = _resume_point(rt, status.id)
    added = 0
    for position, source in enumerate(deferred):
        if position < start_source or rt.store.cancel_requested(status.id):
            continue
        offset = start_offset if position == start_source else 0
        items = itertools.islice(_expand(rt, status.tenant, source), offset, None)
        added += _append(rt, app, status, items,  # the cursor is called within the call
                         lambda n: _cursor(position, offset + n))
    return added


def _resume_point(rt: Runtime, job_id: str) -> tuple[int, int]:
    """Where an earlier, interrupted or paused run stopped (its items' tasks are released
    by the fair share like any others, and lost ones are resent by the reaper)."""
    cursor = rt.store.ingest_cursor(job_id)
    if cursor is None:
        return 0, 0
    state = json.loads(cursor)
    return state["source"], state["done"]


def _cursor(source: int, done: int) -> str:
    return json.dumps({"source": source, "done": done})


def _append(rt: Runtime, app: Celery, status: JobStatus, items: Iterator[NewItem],
            cursor: Callable[[int], str]) -> int:
    added = 0
    for chunk in chunked(items, WRITE_CHUNK):
        rt.store.append_items(status.id, chunk, cursor=lambda n: cursor(added + n))
        dispatch(app, rt.share, status.tenant)
        added += len(chunk)
        if rt.store.pending_items(status.tenant) >= rt.settings.tenant_max_queued_items:
            raise Paused(QUOTA_PAUSE_SECONDS, "the tenant is at its pending-items quota")
    return added


def _expand(rt: Runtime, tenant: str, source: dict[str, str]) -> Iterator[NewItem]:
    url = source["url"]
    try:
        if source["kind"] == "prefix":
            yield from ingest.items_from_prefix(rt.settings, url)
        else:  # an archive uploaded with the request keeps its entries' paths as names
            prefix = "" if source.get("staged") else f"{_archive_name(url)}/"
            yield from _archive_items(rt, tenant, url, prefix)
    except ObjectMissing:
        yield ingest.failed(url, InputError("source_missing", f"{url!r} does not exist"))
    except InputError as exc:  # the source itself is unreadable: say so as a failed item
        yield ingest.failed(_archive_name(url), exc)


def _archive_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _archive_items(rt: Runtime, tenant: str, url: str, prefix: str) -> Iterator[NewItem]:
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        rt.sources.copy_to(url, spool, rt.settings.max_upload_bytes)
        spool.seek(0)
        yield from ingest.items_from_archive(spool, rt.storage, tenant, rt.settings, prefix)
