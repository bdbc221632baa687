"""A worker host cut off from everything for twice the lease time, then back.

While w1 is away (its switch port down: silence both ways), its leases lapse, the reaper on
w2 takes its items back and w2 finishes them. When the link returns, w1 resumes whatever it
was doing, holding work it no longer owns: its late results and state writes must change
nothing (a finished item is never moved again, nothing is counted twice), and nothing it
wrote to storage may be half an artifact.
"""

from __future__ import annotations

import time

import pytest

from depthfleet.local import wait_until
from depthfleet.shared.jobs import TERMINAL
from faults.faultkit import assert_each_item_once, wait_finished, wait_progress
from multihost.fleet import (LEASE, assert_matches_predict, item_finished, job_state,
                             mid_item, seconds_until)

pytestmark = pytest.mark.multihost

PARTITION_BATCH = 24  # w2 alone finishes it well within the partition: w1 comes back late


def test_a_host_cut_off_for_twice_the_lease_changes_nothing_when_it_returns(
        fleet_factory, photos, predicted):
    batch = photos[:PARTITION_BATCH]
    fleet = fleet_factory()
    client = fleet.client()
    job_id = client.submit_files(batch)["id"]
    wait_progress(client, job_id, 4)

    held = mid_item(fleet, "w1", job_id, lambda: fleet.network.partition("w1"))
    cut = time.monotonic()
    taken_over = seconds_until(lambda: item_finished(fleet, job_id, held["index"]), 2 * LEASE)
    assert taken_over is not None, f"w2 did not finish w1's item while w1 was away: {held}"
    time.sleep(max(0.0, cut + 2 * LEASE - time.monotonic()))
    at_heal, tasks_done = job_state(fleet, job_id)[1], w1_tasks_done(fleet)
    fleet.network.heal("w1")

    wait_until(lambda: w1_tasks_done(fleet) > tasks_done, "w1's task it was cut off in", 60)
    wait_finished(client, job_id)
    time.sleep(LEASE)  # the rest of what w1 held when it was cut off
    now = job_state(fleet, job_id)[1]
    moved = [(old, new) for old, new in zip(at_heal, now)
             if old["status"] in TERMINAL and old != new]
    assert not moved, f"late writes moved finished items: {moved}"
    stats = assert_each_item_once(fleet, client, job_id, len(batch), extra_runs=2)
    assert stats["reclaimed"] == 1, stats  # the item w1 ran; its task's others were queued
    assert now[held["index"]]["worker"].startswith("w2:"), now[held["index"]]
    assert_matches_predict(fleet, job_id, predicted)
    assert "changes nothing" in fleet.log("w1"), "w1's result for the item it held"
    assert fleet.workers["w1"].poll() is None, "w1 must ride out the partition"
    assert "items whose leases lapsed" in fleet.log("w2")
    print(f"\nw1 partitioned {2 * LEASE}s mid-item: w2 finished that item {taken_over:.1f}s "
          f"after the cut; {fleet.log('w1').count('changes nothing')} late result(s) of w1 "
          f"changed nothing; {stats}")

def w1_tasks_done(fleet) -> int:
    """Tasks w1's worker is done with (succeeded, failed or retried), by its log."""
    return sum(1 for line in fleet.log("w1").splitlines()
               if "Task depthfleet.process_items[" in line and "] received" not in line)
