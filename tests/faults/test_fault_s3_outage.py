"""The S3 server goes away mid-batch (connections refused, open ones dropped), then returns.

Storage faults retry the task with bounded backoff and give the item back to ``queued``
meanwhile; an outage shorter than the retries costs nothing but time, a longer one fails the
items with ``storage_unavailable`` (retryable), and ``POST /v1/jobs/{id}/retry`` finishes them.
"""

from __future__ import annotations

import time

import pytest
import requests

from faults.faultkit import (MID_BATCH_ENV, all_items, assert_each_item_once, wait_finished,
                             wait_progress, write_images)

pytestmark = pytest.mark.faults

POOL = 2
SIZE = (240, 320)
OUTAGE_SECONDS = 10


def test_s3_down_for_10s_mid_batch_every_item_finishes(deploy, tmp_path):
    batch = 120
    deployment = deploy(**MID_BATCH_ENV)
    deployment.start(POOL)
    client = deployment.client()
    job_id = client.submit_files(write_images(tmp_path / "in", batch, SIZE))["id"]

    wait_progress(client, job_id, batch // 4)
    deployment.s3.cut()
    time.sleep(OUTAGE_SECONDS)
    assert client.status(job_id)["pending"] > 0, "the outage must fall inside the batch"
    deployment.s3.restore()
    back = time.monotonic()

    wait_finished(client, job_id)
    stats = assert_each_item_once(deployment, client, job_id, batch, extra_runs=POOL)
    assert "transient fault" in deployment.system.log("worker-0.log"), "no task met the outage"
    print(f"\nS3 down {OUTAGE_SECONDS}s: done {time.monotonic() - back:.0f}s after it returned, "
          f"{stats}")


def test_items_failed_by_a_longer_outage_finish_on_job_retry(deploy, tmp_path):
    batch = 6
    deployment = deploy(DEPTHFLEET_ITEMS_PER_TASK="3", DEPTHFLEET_STORAGE_RETRIES="1",
                        DEPTHFLEET_VISIBILITY_TIMEOUT="30")
    deployment.system.start_api()
    client = deployment.client()
    job_id = client.submit_files(write_images(tmp_path / "in", batch))["id"]
    deployment.s3.cut()  # before any worker runs: every attempt meets the outage
    deployment.system.start_worker(concurrency=POOL)

    failed = wait_finished(client, job_id)
    assert (failed["status"], failed["failed"]) == ("failed", batch), failed
    for item in all_items(client, job_id):
        assert item["error"]["code"] == "storage_unavailable", item
        assert "storage unreachable after 1 retries" in item["error"]["message"]

    deployment.s3.restore()
    retried = requests.post(f"{deployment.system.api_url}/v1/jobs/{job_id}/retry", timeout=30)
    assert retried.status_code == 202 and retried.json()["requeued"] == batch, retried.text
    wait_finished(client, job_id)
    assert_each_item_once(deployment, client, job_id, batch)
