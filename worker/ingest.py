"""Expanding what is too big for a request: bucket prefixes and archive objects.

Runs in a worker, appends items to the job a chunk at a time and sends their tasks right
after each chunk is stored. A cursor saved with every chunk makes it safe to run again after
a worker died mid-way: it re-sends the tasks of items still queued (tasks are idempotent)
and continues after the last stored item, so no item is added twice or lost.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Iterator

from depthfleet.shared import ingest
from depthfleet.shared.errors import InputError
from depthfleet.shared.jobs import WRITE_CHUNK, NewItem, chunked
from depthfleet.shared.queue import enqueue_items
from depthfleet.shared.storage import ObjectMissing
from depthfleet.worker.runtime import Runtime

log = logging.getLogger(__name__)

SPOOL_BYTES = 64 << 20  # archives larger than this are spooled to disk, never held in memory


def ingest_sources(rt: Runtime, app: object, job_id: str, deferred: list[dict[str, str]]) -> int:
    """Append the items of every deferred source; returns how many were added by this run."""
    status = rt.store.status(job_id)
    if status is None:
        return 0
    start_source, start_offset = _resume_point(rt, app, job_id)
    added = 0
    for position, source in enumerate(deferred):
        if position < start_source or rt.store.cancel_requested(job_id):
            continue
        offset = start_offset if position == start_source else 0
        items = itertools.islice(_expand(rt, status.tenant, source), offset, None)
        added += _append(rt, app, job_id, items, lambda n, p=position, o=offset: _cursor(p, o + n))
    rt.store.finish_ingest(job_id)
    return added


def _resume_point(rt: Runtime, app: object, job_id: str) -> tuple[int, int]:
    """Where an earlier, interrupted run stopped; re-sends the tasks it may not have sent."""
    cursor = rt.store.ingest_cursor(job_id)
    if cursor is None:
        return 0, 0
    enqueue_items(app, job_id, rt.store.queued_indexes(job_id), rt.settings.items_per_task)
    state = json.loads(cursor)
    return state["source"], state["done"]


def _cursor(source: int, done: int) -> str:
    return json.dumps({"source": source, "done": done})


def _append(rt: Runtime, app: object, job_id: str, items: Iterator[NewItem], cursor) -> int:
    added = 0
    for chunk in chunked(items, WRITE_CHUNK):
        queued = rt.store.append_items(job_id, chunk, cursor=lambda n, a=added: cursor(a + n))
        enqueue_items(app, job_id, queued, rt.settings.items_per_task)
        added += len(chunk)
    return added


def _expand(rt: Runtime, tenant: str, source: dict[str, str]) -> Iterator[NewItem]:
    url = source["url"]
    try:
        if source["kind"] == "prefix":
            yield from ingest.items_from_prefix(rt.settings, url)
        else:
            yield from _archive_items(rt, tenant, url)
    except ObjectMissing:
        yield ingest.failed(url, InputError("source_missing", f"{url!r} does not exist"))
    except InputError as exc:  # the source itself is unreadable: say so as a failed item
        yield ingest.failed(url, exc)


def _archive_items(rt: Runtime, tenant: str, url: str) -> Iterator[NewItem]:
    name = url.rsplit("/", 1)[-1]
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        rt.sources.copy_to(url, spool)
        spool.seek(0)
        yield from ingest.items_from_archive(spool, rt.storage, tenant, rt.settings,
                                             prefix=f"{name}/")
