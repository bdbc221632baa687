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

from faults.faultkit import assert_each_item_once, wait_finished, wait_progress
from multihost.fleet import (LEASE, assert_matches_predict, seconds_until_finished,
                             wait_finished_quietly)

pytestmark = pytest.mark.multihost


def test_a_host_cut_off_for_twice_the_lease_changes_nothing_when_it_returns(
        fleet_factory, photos, predicted):
    fleet = fleet_factory()
    client = fleet.client()
    job_id = client.submit_files(photos)["id"]
    wait_progress(client, job_id, 4)

    fleet.network.partition("w1")
    cut = time.monotonic()
    assert client.status(job_id)["pending"] > 0, "the partition must land mid-batch"
    recovered = seconds_until_finished(client, job_id, 2 * LEASE)  # w2 alone, w1 still away
    time.sleep(max(0.0, cut + 2 * LEASE - time.monotonic()))
    fleet.network.heal("w1")

    wait_finished(client, job_id, timeout=180)
    wait_finished_quietly(fleet, job_id, settle=LEASE)  # w1's late writes land meanwhile
    stats = assert_each_item_once(fleet, client, job_id, len(photos), extra_runs=2)
    assert stats["reclaimed"] >= 1, f"w1 held nothing when it was cut off: {stats}"
    assert_matches_predict(fleet, job_id, predicted)
    assert fleet.workers["w1"].poll() is None, "w1 must ride out the partition"
    assert "items whose leases lapsed" in fleet.log("w2")
    late = fleet.log("w1").count("changes nothing")
    print(f"\nw1 partitioned {2 * LEASE}s: the batch was done "
          f"{recovered if recovered is None else round(recovered, 1)}s after the cut, w1 "
          f"still away; {late} late results of w1 changed nothing; {stats}")
