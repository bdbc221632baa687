"""Workers die mid-batch: SIGKILL of pool processes, of a whole worker; nothing is lost or doubled.

A killed pool process's task is requeued at once (``task_reject_on_worker_lost``); a whole
worker killed leaves its tasks unacknowledged: the broker returns them after the visibility
timeout, and the reaper resends their items once their leases lapse. Either way every item
ends succeeded exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from faults.faultkit import (assert_each_item_once, kill_whole_worker, wait_finished, wait_for_pool,
                      wait_progress, write_images)

pytestmark = pytest.mark.faults

BATCH = 300
POOL = 2
POOL_KILLS = 5
SIZE = (240, 320)  # bigger than tiny: the batch lasts long enough for every kill to land in it


def test_batch_survives_pool_kills_and_a_whole_worker_kill(deploy, tmp_path):
    deployment = deploy(DEPTHFLEET_ITEMS_PER_TASK="2", DEPTHFLEET_VISIBILITY_TIMEOUT="10",
                        DEPTHFLEET_LEASE_SECONDS="10")
    system = deployment.system
    worker = system.start_worker(concurrency=POOL)
    system.start_api()
    wait_for_pool(worker, POOL)
    client = deployment.client()
    started = time.monotonic()
    job_id = client.submit_files(write_images(tmp_path / "in", BATCH, SIZE))["id"]

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for kill in range(POOL_KILLS):  # one kill at a random moment of each stretch of 27 items
        wait_progress(client, job_id, 15 + 27 * kill + rng.randrange(20))
        os.kill(rng.choice(wait_for_pool(worker, POOL)), signal.SIGKILL)
        assert client.status(job_id)["pending"] > 0, f"kill after the batch (seed {seed})"
    wait_progress(client, job_id, rng.randrange(170, 220))
    kill_whole_worker(worker)
    assert client.status(job_id)["pending"] > 0
    system.start_worker(concurrency=POOL)

    wait_finished(client, job_id)
    stats = assert_each_item_once(deployment, client, job_id, BATCH,
                                  extra_runs=POOL_KILLS + POOL)
    print(f"\n{BATCH} items, {POOL_KILLS} pool kills + 1 worker kill (seed {seed}): "
          f"{time.monotonic() - started:.0f}s, {stats}")
