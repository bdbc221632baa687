"""Limits that hold: presigned uploads past the size limit, forged Host headers, and the
upload check that used to cost one storage lookup per digest."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import requests

from faults.faultkit import all_items, wait_finished
from support import tiny_jpeg

pytestmark = pytest.mark.faults

LIMIT_MB = 25
TENANT = "local"


def test_a_presigned_upload_past_the_limit_fails_before_it_is_read(deploy):
    deployment = deploy(DEPTHFLEET_MAX_UPLOAD_MB=str(LIMIT_MB))
    deployment.start(1)
    api, client = deployment.system.api_url, deployment.client()
    body = os.urandom(1 << 20) * 60  # 60 MB, over the 25 MB limit
    grant = requests.post(f"{api}/v1/uploads/presign", json={"filename": "scans.zip"},
                          timeout=30).json()
    assert requests.put(grant["url"], data=body, timeout=120).ok
    photo_key = f"df/t/{TENANT}/incoming/huge.jpg"  # the same, named as an image
    deployment.s3_direct.put_object(Bucket=deployment.bucket, Key=photo_key, Body=body)
    started = time.monotonic()
    job = client.submit_json({"keys": [grant["source"], f"s3://{deployment.bucket}/{photo_key}"]})
    status = wait_finished(client, job["id"])
    assert (status["failed"], status["total"]) == (2, 2), status
    for item in all_items(client, job["id"]):
        assert item["error"]["code"] == "file_too_large", item
        assert f"{LIMIT_MB * 1024 * 1024:,}" in item["error"]["message"], item
    assert time.monotonic() - started < 30


def test_links_never_name_a_forged_host(deploy):
    public = "https://depth.example.org"
    for env, expected in (({}, ""), ({"DEPTHFLEET_PUBLIC_URL": public}, public)):
        deployment = deploy(**env)
        deployment.system.start_api()
        api = deployment.system.api_url
        response = requests.post(f"{api}/v1/jobs", files=[("file", ("a.jpg", tiny_jpeg(1)))],
                                 headers={"Host": "evil.example:666"}, timeout=30)
        assert response.status_code == 202, response.text
        body = response.json()
        links = [response.headers["Location"], *body["links"].values()]
        assert all(link.startswith(f"{expected}/v1/jobs/{body['id']}") for link in links), links
        assert not any("evil" in link for link in links)
        own = requests.get(f"{api}/v1/jobs/{body['id']}", timeout=30).json()["links"]["self"]
        assert own.startswith(expected or api), own  # a loopback Host is used as it came
        deployment.system.stop()


def test_upload_checks_ask_redis_not_storage(deploy, moto_server):
    deployment = deploy()
    deployment.system.start_api()
    api = deployment.system.api_url
    uploaded = [tiny_jpeg(1), os.urandom(64)]
    for data in uploaded:
        digest = hashlib.sha256(data).hexdigest()
        assert requests.put(f"{api}/v1/uploads/{digest}", data=data, timeout=30).ok
    known = {hashlib.sha256(d).hexdigest() for d in uploaded}
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2998)] + sorted(known)
    def input_lookups() -> int:
        return moto_server.log.read_text(errors="replace").count(
            f"HEAD /{deployment.bucket}/df/t/{TENANT}/inputs/")

    heads_before = input_lookups()
    answers, times = [], []

    def check() -> None:
        started = time.perf_counter()
        answers.append(requests.post(f"{api}/v1/uploads/check", json={"sha256": digests},
                                     timeout=60).json()["missing"])
        times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=check) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(set(missing) == set(digests) - known for missing in answers)
    print(f"16 concurrent checks of {len(digests)} digests: slowest {max(times):.2f} s")
    assert max(times) < 5
    time.sleep(0.5)  # the server logs a request just after answering it
    assert heads_before >= 2 and input_lookups() == heads_before
