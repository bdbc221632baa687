"""Redis (with its append-only file) SIGKILLed and restarted mid-batch: nothing accepted is lost.

Job state and the task queue live in Redis. Workers and the API ride out the restart (client
retries, task retries for Redis faults, the broker reconnecting); what Redis acknowledged is
in the AOF, so every accepted item finishes, and counts once.
"""

from __future__ import annotations

import time

import pytest

from faults.faultkit import (MID_BATCH_ENV, assert_each_item_once, wait_finished, wait_progress,
                             write_images)

pytestmark = pytest.mark.faults

BATCH = 150
LATE_BATCH = 20
POOL = 2
SIZE = (240, 320)


def test_redis_killed_and_restarted_mid_batch(deploy, tmp_path):
    deployment = deploy(**MID_BATCH_ENV)
    deployment.start(POOL)
    client = deployment.client()
    job_id = client.submit_files(write_images(tmp_path / "in", BATCH, SIZE))["id"]

    wait_progress(client, job_id, BATCH // 3)
    started = time.monotonic()
    deployment.redis.kill()
    time.sleep(2)
    deployment.redis.start()
    late_id = client.submit_files(write_images(tmp_path / "late", LATE_BATCH, SIZE, BATCH))["id"]

    wait_finished(client, job_id)
    wait_finished(client, late_id)
    late = client.status(late_id)
    assert (late["succeeded"], late["failed"], late["pending"]) == (LATE_BATCH, 0, 0), late
    stats = assert_each_item_once(deployment, client, job_id, BATCH, extra_runs=POOL,
                                  other_items=LATE_BATCH)
    print(f"\nRedis down 2 s at item {BATCH // 3}: recovered and finished in "
          f"{time.monotonic() - started:.0f}s, {stats}")
