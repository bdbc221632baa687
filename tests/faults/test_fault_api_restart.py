"""The API is SIGKILLed and restarted while a client uploads: the client's retries carry it.

``depthfleet.client.Client`` retries refused connections and dropped requests with backoff;
uploads are content-addressed and job creation carries an Idempotency-Key, so repeating any
request is harmless: every file is stored once, one job is created, and every item finishes.
"""

from __future__ import annotations

import uuid

import pytest

from depthfleet.shared.digests import sha256_file
from faults.faultkit import assert_each_item_once, restart_api, wait_finished, write_images

pytestmark = pytest.mark.faults

FILES = 100
RESTART_AFTER = 20  # uploads done when the API is killed; the rest are in flight or waiting


def test_api_restarted_mid_upload_client_retries(deploy, tmp_path):
    deployment = deploy(DEPTHFLEET_ITEMS_PER_TASK="4")
    deployment.system.start_worker(concurrency=2)
    deployment.system.start_api()
    client = deployment.client()
    paths = write_images(tmp_path / "in", FILES, (240, 320))
    digests = [sha256_file(p) for p in paths]
    assert client.missing_uploads(digests) == set(digests)

    done: list[object] = []

    def on_done(path: object) -> None:
        done.append(path)
        if len(done) == RESTART_AFTER:
            restart_api(deployment.system, down_seconds=2)

    client.upload_many(list(zip(paths, digests)), workers=8, on_done=on_done)
    assert len(done) == FILES and client.missing_uploads(digests) == set()
    assert "PUT /v1/uploads" in deployment.system.log("api.log")

    body = {"uploads": [{"name": p.name, "sha256": d} for p, d in zip(paths, digests)]}
    key = uuid.uuid4().hex
    job_id = client.submit_json(body, idempotency_key=key)["id"]
    assert client.submit_json(body, idempotency_key=key)["id"] == job_id  # a repeated request
    assert deployment.store.tenant_jobs("local") == [job_id]
    wait_finished(client, job_id)
    assert_each_item_once(deployment, client, job_id, FILES)
