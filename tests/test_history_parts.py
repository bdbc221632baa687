"""The parts of issue #15's API on their own: the job list's pages (on the machine's Redis),
the streamed ZIP writer, the names of its files."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import pytest
import redis

from depthfleet.api.bundle import Entry, opened_ahead, zip_stream
from depthfleet.outputs import output_stems, relative_names
from depthfleet.shared.jobs import JobCursor, JobStore, NewItem


# -- the job list ---------------------------------------------------------------------------
@pytest.fixture()
def store(redis_db_url) -> JobStore:
    client = redis.Redis.from_url(redis_db_url)
    client.flushdb()
    return JobStore(client, 3600)


def _create(store: JobStore, tenant: str, at: float) -> str:
    """A job created at ``at``: the store stamps Redis's clock (``TIME``), so the creation
    time is set afterwards where the list reads it, to make instants that coincide."""
    job_id = store.create_job(tenant, [NewItem(name="a.jpg", source="k")], {}).job_id
    store.redis.zadd(store._tenant_key(tenant), {job_id: at})
    store.redis.hset(store.job_key(job_id), "created_at", at)
    return job_id


def _all_pages(store: JobStore, tenant: str, limit: int) -> list[str]:
    found, cursor = [], None
    while True:
        page, cursor = store.job_page(tenant, limit, cursor)
        assert len(page) <= limit
        found += [status.id for status in page]
        if cursor is None:
            return found
        cursor = JobCursor.parse(str(cursor))  # as a client sends it back


def test_pages_hold_every_job_once_newest_first_even_created_in_one_instant(store):
    same = [_create(store, "alice", 1000.0) for _ in range(5)]
    later = [_create(store, "alice", 1000.0 + n) for n in (1, 2, 3)]
    _create(store, "bob", 1500.0)
    expected = later[::-1] + sorted(same, reverse=True)  # one instant: by id, descending
    for limit in (1, 2, 3, 8, 100):
        assert _all_pages(store, "alice", limit) == expected, limit
    page, cursor = store.job_page("alice", 8)
    assert cursor is None, "no empty last page"


def test_expired_jobs_are_skipped_and_dropped(store):
    ids = [_create(store, "alice", 2000.0 + n) for n in range(6)]
    for job_id in ids[1:5]:  # as the TTL would
        store.redis.delete(store.job_key(job_id), store.items_key(job_id))
    page, cursor = store.job_page("alice", 1)
    assert [s.id for s in page] == [ids[5]]
    page, cursor = store.job_page("alice", 1, cursor)
    assert [s.id for s in page] == [ids[0]] and cursor is None
    assert store.tenant_jobs("alice") == [ids[5], ids[0]]


@pytest.mark.parametrize("text", ["", "x", "12", "12-", "-" + "a" * 32, "nan-" + "a" * 32,
                                  "inf-" + "a" * 32, "-5-" + "a" * 32, "1.5-" + "A" * 32,
                                  "1.5-" + "a" * 31, "1.5-" + "a" * 33])
def test_cursors_that_are_not_ours_are_refused(text):
    assert JobCursor.parse(text) is None


def test_a_cursor_round_trips_exactly():
    cursor = JobCursor(time.time(), "ab" * 16)
    assert JobCursor.parse(str(cursor)) == cursor


# -- the ZIP writer ---------------------------------------------------------------------------
MB = 1 << 20


def test_entries_are_sent_while_they_are_read():
    """A 12 MB entry arrives as 12 pieces of about 1 MB, never as one: nothing is buffered."""
    written = []

    def chunks():
        for n in range(12):
            written.append(n)
            yield bytes([n]) * MB

    stream = zip_stream([Entry("big.bin", chunks(), compress=False),
                         Entry("notes.json", iter([b'{"a": 1}']), compress=True)], time.time())
    pieces = []
    for piece in stream:
        pieces.append(piece)
        assert len(b"".join(pieces)) <= (len(written) + 1) * MB, "ran ahead of the reads"
    assert max(map(len, pieces)) < MB + 1024 and len(pieces) >= 12
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert archive.testzip() is None
    assert archive.read("big.bin") == b"".join(bytes([n]) * MB for n in range(12))
    assert archive.read("notes.json") == b'{"a": 1}'
    assert archive.getinfo("big.bin").compress_type == zipfile.ZIP_STORED
    assert archive.getinfo("notes.json").compress_type == zipfile.ZIP_DEFLATED


def test_files_are_opened_ahead_in_order_and_gone_ones_dropped():
    running, peak, lock = 0, 0, threading.Lock()

    def opener(n: int):
        def open_():
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.01)
            with lock:
                running -= 1
            return None if n % 5 == 0 else [str(n).encode()]
        return open_

    entries = list(opened_ahead(((f"{n}.txt", opener(n), False) for n in range(30)), 4))
    assert [e.path for e in entries] == [f"{n}.txt" for n in range(30) if n % 5]
    assert [b"".join(e.chunks) for e in entries] == [str(n).encode() for n in range(30) if n % 5]
    assert 1 < peak <= 4


# -- names -----------------------------------------------------------------------------------
def test_item_names_become_safe_distinct_relative_paths():
    names = ["a.jpg", "a.jpg", "a~1.jpg", "s3://bucket/x/../y.jpg", "../../etc/passwd",
             "/abs/z.png", "win\\dir\\w.jpg", "", "./.", "noext", "noext"]
    assert relative_names(names) == [
        "a.jpg", "a~1.jpg", "a~1~2.jpg", "bucket/x/y.jpg", "etc/passwd", "abs/z.png",
        "win/dir/w.jpg", "item", "item~8", "noext", "noext~10"]
    assert len(set(relative_names(names))) == len(names)


def test_stems_are_those_of_fetch():
    paths = relative_names(["cat.jpg", "cat.png", "album/dog.jpg"])
    assert output_stems(paths) == {"cat.jpg": "cat.jpg", "cat.png": "cat.png",
                                   "album/dog.jpg": "album/dog"}
