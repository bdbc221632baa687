"""One worker host's clock five minutes off (libfaketime on every process of that host).

Lease expiries, the reaper's "lapsed", heartbeats and idle jobs are all measured by Redis's
clock (``TIME`` inside the scripts), so a host whose clock runs behind does not see its own
leases lapse for everyone else (a reclaim storm), and one whose clock runs ahead neither
reclaims everyone else's live work nor, when it dies, strands its items for five minutes.
"""

from __future__ import annotations

import time

import pytest

from faults.faultkit import assert_each_item_once, wait_finished, wait_progress
from multihost.fleet import LEASE, assert_matches_predict, item_finished, mid_item, seconds_until

pytestmark = pytest.mark.multihost

SKEW = 300  # seconds
RECOVERY_BOUND = 10 * LEASE  # the skewed host's items must be back well within SKEW


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_skewed_host_neither_storms_nor_strands_its_items(fleet_factory, photos, predicted,
                                                            skew):
    fleet = fleet_factory(skews={"w2": skew})
    offset = fleet.host_clock("w2") - time.time()
    assert abs(offset - skew) < 5, f"w2's processes see {offset:+.0f}s, not {skew:+d}s"
    client = fleet.client()
    job_id = client.submit_files(photos)["id"]

    wait_progress(client, job_id, len(photos) // 2, timeout=120)
    assert fleet.store.stat("items_reclaimed") == 0, "live work was reclaimed: a storm"
    assert "items whose leases lapsed" not in fleet.log("w1") + fleet.log("w2")

    held = mid_item(fleet, "w2", job_id, lambda: fleet.kill_worker("w2"))  # with work in hand
    recovered = seconds_until(lambda: item_finished(fleet, job_id, held["index"]),
                              RECOVERY_BOUND)
    assert recovered is not None, f"w2's item was stranded: {held}"
    wait_finished(client, job_id, timeout=RECOVERY_BOUND)
    stats = assert_each_item_once(fleet, client, job_id, len(photos), extra_runs=1)
    assert stats["reclaimed"] == 1, stats  # the one item its one process ran, only
    assert_matches_predict(fleet, job_id, predicted)
    print(f"\nw2 {skew:+d}s: no reclaim while alive; killed mid-item, that item was done by w1 "
          f"{recovered:.1f}s later; {stats}")
