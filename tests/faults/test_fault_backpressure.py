"""Backpressure: with the queue at its limit new jobs get 429 + Retry-After, before any work;
the accepted ones finish, and once the queue drains submissions are accepted again."""

from __future__ import annotations

import hashlib

import pytest
import requests

from faults.faultkit import assert_each_item_once, wait_finished, write_images

pytestmark = pytest.mark.faults

LIMIT = 12


def test_full_queue_answers_429_and_accepted_jobs_finish(deploy, tmp_path):
    deployment = deploy(DEPTHFLEET_MAX_QUEUED_ITEMS=str(LIMIT))
    deployment.system.start_api()  # no worker yet: the queue stays at its limit
    api = f"{deployment.system.api_url}/v1/jobs"
    client = deployment.client()
    accepted = client.submit_files(write_images(tmp_path / "first", LIMIT))["id"]

    late = write_images(tmp_path / "late", 1, first_seed=LIMIT)[0]
    refused = requests.post(api, files=[("file", (late.name, late.read_bytes()))], timeout=30)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) > 0
    by_json = requests.post(api, json={"keys": ["s3://elsewhere/a.jpg"]}, timeout=30)
    assert by_json.status_code == 429, "the limit comes before any validation or work"
    digest = hashlib.sha256(late.read_bytes()).hexdigest()
    assert not any(digest in key for key in deployment.objects("t/local/inputs/"))

    deployment.system.start_worker(concurrency=2)
    wait_finished(client, accepted)
    assert_each_item_once(deployment, client, accepted, LIMIT)
    second = client.submit_files([late])["id"]
    assert wait_finished(client, second)["succeeded"] == 1
    assert deployment.store.pending_items() == 0
