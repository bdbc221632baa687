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
