"""The reaper alone brings back what the broker would keep for an hour.

With the default visibility timeout (3600 s) the broker returns a vanished worker's tasks only
after an hour. The reaper does not wait: items whose leases lapse are sent again, and queued
items that have no task at all (the API died between storing a job and sending it) are sent
once the broker has nothing else waiting.
"""

from __future__ import annotations

import pytest

from depthfleet.shared import layout
from depthfleet.shared.digests import sha256_file
from depthfleet.shared.jobs import NewItem
from faults.faultkit import (assert_each_item_once, kill_whole_worker, wait_finished,
                             wait_progress, write_images)

pytestmark = pytest.mark.faults

POOL = 2
LEASE = "6"


def test_items_of_a_killed_worker_come_back_through_their_leases(deploy, tmp_path):
    batch = 40
    deployment = deploy(DEPTHFLEET_ITEMS_PER_TASK="4", DEPTHFLEET_LEASE_SECONDS=LEASE)
    worker = deployment.start(POOL)
    client = deployment.client()
    job_id = client.submit_files(write_images(tmp_path / "in", batch, (240, 320)))["id"]

    wait_progress(client, job_id, 6)
    kill_whole_worker(worker)  # its two tasks stay unacknowledged in the broker for an hour
    held = deployment.store.expired_leases(now=float("inf"))
    assert held, "the killed worker held no item"
    deployment.system.start_worker(concurrency=POOL)

    wait_finished(client, job_id, timeout=180)
    stats = assert_each_item_once(deployment, client, job_id, batch, extra_runs=POOL)
    assert stats["reclaimed"] >= 1, stats
    assert "items whose leases lapsed" in deployment.system.log("worker-1.log")


def test_a_stored_job_whose_tasks_were_never_sent_still_finishes(deploy, tmp_path):
    batch = 5
    deployment = deploy(DEPTHFLEET_LEASE_SECONDS=LEASE)
    deployment.system.start_worker(concurrency=1)
    deployment.system.start_api()
    client = deployment.client()
    paths = write_images(tmp_path / "in", batch)
    digests = [sha256_file(p) for p in paths]
    client.upload_many(list(zip(paths, digests)))
    # What the API stores before it sends tasks; here it "dies" right after.
    items = [NewItem(name=p.name, source=layout.input_key("local", d), sha256=d)
             for p, d in zip(paths, digests)]
    created = deployment.store.create_job("local", items, {})
    job_id = created.job_id
    assert len(created.queued) == batch

    wait_finished(client, job_id, timeout=120)
    assert_each_item_once(deployment, client, job_id, batch)
    assert "queued items that had no task" in deployment.system.log("worker-0.log")
