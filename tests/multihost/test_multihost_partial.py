"""Partial partitions: one worker host loses Redis but keeps S3, or loses S3 but keeps Redis.

Each for less than the retry budget (the host rides it out: nothing fails, nothing is done
twice) and for more:

- Redis (job store and broker) gone from w1 for longer than its clients' retries: w1 can
  neither renew its leases nor finish its items, so the reaper on w2 takes them back; w1's
  Celery consumer reconnects when the link returns and its late writes change nothing.
- S3 gone from w1 for longer than its retries (boto3's, then ``DEPTHFLEET_STORAGE_RETRIES``
  task retries; none here): w1 keeps its items leased while it retries (it is alive: the
  reaper rightly leaves them alone), then fails them ``storage_unavailable``, retryable;
  ``POST /v1/jobs/{id}/retry`` finishes them.

The short cuts drop packets in silence (clients wait out their timeouts); the long ones
refuse connections (TCP reset), so that the budget runs out in seconds, not minutes of
connect timeouts.
"""

from __future__ import annotations

import time

import pytest
import requests

from faults.faultkit import all_items, assert_each_item_once, wait_finished, wait_progress
from multihost.fleet import (LEASE, assert_matches_predict, item_finished, mid_item,
                             seconds_until, wait_finished_quietly)

pytestmark = pytest.mark.multihost

# DEPTHFLEET_STORAGE_RETRIES of the long S3 cut: none, so its budget is one attempt's own
# retries (boto3's 5 tries, at most ~15 s of backoff against refused connections).
RETRIES = "0"
SHORT = 3.0  # seconds: well inside every retry budget
LONG = {"redis": 15.0, "s3": 30.0}  # past redis-py's ~9 s of backoff; past boto3's ~15 s


def cut_w1(fleet_factory, photos, service: str, seconds: float, reject: bool, **env: str):
    """Submit the batch, cut ``service`` from w1 while it runs an item, for ``seconds``,
    heal; returns (fleet, client, job id, seconds from the heal until the item w1 held was
    finished, by whichever host)."""
    fleet = fleet_factory(**env)
    client = fleet.client()
    job_id = client.submit_files(photos)["id"]
    wait_progress(client, job_id, 4)
    held = mid_item(fleet, "w1", job_id, lambda: fleet.network.cut("w1", fleet.service(service),
                                                                   reject=reject))
    time.sleep(seconds)
    fleet.network.heal("w1")
    held_done = seconds_until(lambda: item_finished(fleet, job_id, held["index"]), 120)
    assert held_done is not None, f"the item w1 held never finished: {held}"
    wait_finished(client, job_id, timeout=240)
    return fleet, client, job_id, held_done


@pytest.mark.parametrize("service", ["redis", "s3"])
def test_a_short_cut_of_one_service_costs_only_time(fleet_factory, photos, predicted, service):
    fleet, client, job_id, after = cut_w1(fleet_factory, photos, service, SHORT, reject=False)
    wait_finished_quietly(fleet, job_id, settle=2)
    stats = assert_each_item_once(fleet, client, job_id, len(photos), extra_runs=1)
    assert_matches_predict(fleet, job_id, predicted)
    print(f"\n{service} cut from w1 for {SHORT:.0f}s (silent): the item w1 held was done "
          f"{after:.1f}s after the heal; {stats}")


def test_redis_lost_past_the_retries_the_reaper_takes_the_work(fleet_factory, photos,
                                                               predicted):
    fleet, client, job_id, after = cut_w1(fleet_factory, photos, "redis", LONG["redis"],
                                          reject=True)
    wait_finished_quietly(fleet, job_id, settle=LEASE)
    stats = assert_each_item_once(fleet, client, job_id, len(photos), extra_runs=2)
    assert stats["reclaimed"] >= 1, stats
    assert_matches_predict(fleet, job_id, predicted)
    assert fleet.workers["w1"].poll() is None
    print(f"\nredis cut from w1 for {LONG['redis']:.0f}s: the item w1 held was done "
          f"{after:.1f}s after the heal (0: before it, by w2); {stats}")


def test_s3_lost_past_the_retries_fails_retryably_then_retry_finishes(fleet_factory, photos,
                                                                      predicted):
    fleet, client, job_id, after = cut_w1(fleet_factory, photos, "s3", LONG["s3"], reject=True,
                                          DEPTHFLEET_STORAGE_RETRIES=RETRIES)
    failed = [item for item in all_items(client, job_id) if item["status"] == "failed"]
    assert failed, "w1 met the outage with work in hand: some items must have failed"
    assert client.status(job_id)["failed"] == len(failed)
    for item in failed:
        assert item["error"]["code"] == "storage_unavailable" and item["retryable"], item
        assert f"after {RETRIES} retries" in item["error"]["message"], item

    retried = requests.post(f"{fleet.system.api_url}/v1/jobs/{job_id}/retry", timeout=30)
    assert retried.status_code == 202 and retried.json()["requeued"] == len(failed), retried.text
    wait_finished(client, job_id)
    wait_finished_quietly(fleet, job_id, settle=2)
    stats = assert_each_item_once(fleet, client, job_id, len(photos), extra_runs=1)
    assert_matches_predict(fleet, job_id, predicted)
    print(f"\ns3 cut from w1 for {LONG['s3']:.0f}s: {len(failed)} failed retryably, all done "
          f"after the retry; {stats}")
