"""How items are grouped into tasks: bulk groups, a one-by-one tail, nothing lost or repeated."""

from __future__ import annotations

import pytest

from depthfleet.shared.queue import TAIL_TASKS, task_batches


@pytest.mark.parametrize("count", [0, 1, 7, 8, 33, 1000, 1001])
def test_every_item_is_sent_exactly_once_in_order(count):
    indexes = list(range(100, 100 + count))
    batches = task_batches(indexes, 8)
    assert [i for batch in batches for i in batch] == indexes


def test_bulk_is_grouped_and_the_tail_goes_one_by_one():
    batches = task_batches(list(range(1000)), 8)
    assert all(len(b) == 8 for b in batches[:-TAIL_TASKS * 8])
    assert all(len(b) == 1 for b in batches[-TAIL_TASKS * 8:])
    assert len(batches) == (1000 - TAIL_TASKS * 8) // 8 + TAIL_TASKS * 8


def test_release_reaches_the_last_stored_item_across_a_gap_in_indexes(redis_db_url):
    """An ingestion that died after taking a chunk's indexes but before storing it leaves a
    gap; the items stored after the gap must still be released (the cursor follows the
    stored index range, not the count of items)."""
    import redis

    from depthfleet.shared.fairshare import FairShare
    from depthfleet.shared.jobs import JobStore, NewItem

    store = JobStore(redis.Redis.from_url(redis_db_url), 3600)
    share = FairShare(store, window=-1, per_task=8, lapse_seconds=600)
    items = [NewItem(name=f"{i}.jpg", source="x") for i in range(20)]
    job_id = store.create_job("t", [], {}, ingesting=True).job_id
    store.redis.hincrby(store.job_key(job_id), "next_index", 10)  # the lost chunk's indexes
    store.append_items(job_id, items)
    store.finish_ingest(job_id)
    share.add_job("t", job_id)
    released = [i for release in share.release("t") for i in release.indexes]
    assert released[-1] == 29 and set(range(10, 30)) <= set(released)
    assert share.tenants() == []
