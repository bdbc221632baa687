"""Nobody let in: tenant B reaches nothing of tenant A's, on every route the API has.

Routes are enumerated from the Flask URL map, so a new route fails this test until it is
classified: public (listed below), naming a job (B must get the same 404 as for a job that
does not exist), or tenant-scoped by construction (each with its own check here).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from depthfleet.api import create_app
from depthfleet.shared.settings import Settings
from faults.faultkit import wait_finished, write_images

pytestmark = pytest.mark.faults

KEYS = {"alice": "key-alice-7f3a9c1e5b", "bob": "key-bob-2d8e4f6a0c"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
PRESIGN_SECONDS = 60
PUBLIC = {"static", "web.static", "health.healthz", "health.readyz", "health.metrics",
          "web.index", "openapi.openapi_json"}
NOT_FOUND = {"error": {"code": "not_found", "message": "no such job"}}


@pytest.fixture()
def tenants(deploy, tmp_path):
    """A deployment with two tenants; alice has one finished job."""
    deployment = deploy(DEPTHFLEET_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
                        DEPTHFLEET_PRESIGN_SECONDS=str(PRESIGN_SECONDS),
                        DEPTHFLEET_MAX_UPLOAD_MB="1")
    deployment.system.start_worker(concurrency=1)
    deployment.system.start_api()
    alice = deployment.client(KEYS["alice"])
    photo = write_images(tmp_path / "in", 1)[0]
    job_id = alice.submit_files([photo])["id"]
    assert wait_finished(alice, job_id)["status"] == "succeeded"
    return deployment, job_id, hashlib.sha256(photo.read_bytes()).hexdigest()


def _rules(deployment):
    app = create_app(Settings.from_env(deployment.system.env))
    return [(rule, method) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]


def test_every_route_is_isolated_between_tenants(tenants):
    deployment, job_id, digest = tenants
    api = deployment.system.api_url
    job_values = {"job_id": job_id, "index": "0", "filename": "depth.png"}
    scoped = {"jobs.create_job": _create_job_cannot_reach_other_tenant,
              "jobs.list_jobs": _job_list_is_own,
              "uploads.check": _check_does_not_reveal_other_uploads,
              "uploads.put": _put_stores_in_own_folder,
              "uploads.presign": _presign_is_own_and_short}
    for rule, method in _rules(deployment):
        if rule.endpoint in PUBLIC:
            continue
        if "job_id" in rule.arguments:
            path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: job_values[m.group(1)], rule.rule)
            _assert_hidden(api, method, path, job_id)
        else:
            assert rule.endpoint in scoped, f"unclassified route {method} {rule.rule}"
            scoped[rule.endpoint](api, deployment, digest)
    for path in ("/healthz", "/readyz", "/metrics", "/", "/v1/openapi.json"):
        assert requests.get(api + path, timeout=10).status_code == 200, path


def _assert_hidden(api: str, method: str, path: str, job_id: str) -> None:
    """B gets exactly the 404 of a job that never existed; no key or a wrong key, a 401."""
    answer = requests.request(method, api + path, headers=BOB, timeout=10)
    missing = requests.request(method, api + path.replace(job_id, "0" * 32), headers=BOB,
                               timeout=10)
    assert answer.status_code == 404 and answer.json() == missing.json() == NOT_FOUND, \
        (method, path, answer.text)
    for headers in ({}, {"Authorization": "Bearer key-alice-7f3a9c1e5c"}):
        assert requests.request(method, api + path, headers=headers, timeout=10).status_code \
            == 401, (method, path)
    if method == "GET":
        owner = requests.get(api + path, headers=ALICE, timeout=10, allow_redirects=False)
        assert owner.status_code in (200, 302), (path, owner.status_code)


def _create_job_cannot_reach_other_tenant(api: str, deployment, digest: str) -> None:
    bucket_key = f"s3://{deployment.bucket}/df/t/alice/inputs/{digest[:2]}/{digest}"
    for keys, code in (([bucket_key], "source_forbidden"),
                       (["http://169.254.169.254/latest/meta-data/"], "invalid_source"),
                       (["file:///etc/passwd"], "source_forbidden")):
        answer = requests.post(f"{api}/v1/jobs", json={"keys": keys}, headers=BOB, timeout=10)
        assert 400 <= answer.status_code < 500 and answer.json()["error"]["code"] == code, \
            (keys, answer.text)
    job = requests.post(f"{api}/v1/jobs", headers=BOB, timeout=10,
                        json={"uploads": [{"name": "x.jpg", "sha256": digest}]}).json()
    bob = deployment.client(KEYS["bob"])
    wait_finished(bob, job["id"])
    item = bob.items(job["id"])["items"][0]
    assert item["status"] == "failed" and item["error"]["code"] == "source_missing", item


def _job_list_is_own(api: str, deployment, digest: str) -> None:
    def listed(headers: dict[str, str]) -> set[str]:
        answer = requests.get(f"{api}/v1/jobs?limit=100", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return {job["id"] for job in answer.json()["jobs"]}

    alices = listed(ALICE)
    assert alices and not alices & listed(BOB)
    assert requests.get(f"{api}/v1/jobs", timeout=10).status_code == 401


def _check_does_not_reveal_other_uploads(api: str, deployment, digest: str) -> None:
    answer = requests.post(f"{api}/v1/uploads/check", json={"sha256": [digest]}, headers=BOB,
                           timeout=10)
    assert answer.json() == {"missing": [digest]}


def _put_stores_in_own_folder(api: str, deployment, digest: str) -> None:
    data = b"bob's own bytes"
    own = hashlib.sha256(data).hexdigest()
    answer = requests.put(f"{api}/v1/uploads/{own}", data=data, headers=BOB, timeout=10)
    assert answer.status_code == 201 and answer.json()["already_stored"] is False
    assert deployment.objects(f"t/bob/inputs/{own[:2]}/{own}") == [f"t/bob/inputs/{own[:2]}/{own}"]


def _presign_is_own_and_short(api: str, deployment, digest: str) -> None:
    answer = requests.post(f"{api}/v1/uploads/presign", json={"filename": "a.zip"}, headers=BOB,
                           timeout=10).json()
    assert "/t/bob/" in answer["source"] and "/t/bob/" in urlparse(answer["url"]).path
    assert int(parse_qs(urlparse(answer["url"]).query)["X-Amz-Expires"][0]) <= PRESIGN_SECONDS


def test_artifacts_are_short_lived_tenant_scoped_links(tenants):
    """Stored artifacts and renders on read alike: presigned, short-lived, under alice's keys."""
    deployment, job_id, _ = tenants
    alice = deployment.client(KEYS["alice"])
    artifacts = alice.items(job_id)["items"][0]["artifacts"]
    for name, folder, magic in (("thumbnail", "t/alice/results/", b"\xff\xd8"),
                                ("depth_png", "cache/t/alice/results/", b"\x89PNG")):
        redirect = requests.get(artifacts[name], headers=ALICE, timeout=60, allow_redirects=False)
        assert redirect.status_code == 302
        location = urlparse(redirect.headers["Location"])
        assert location.path.startswith(f"/{deployment.bucket}/df/{folder}"), location
        assert int(parse_qs(location.query)["X-Amz-Expires"][0]) <= PRESIGN_SECONDS
        assert requests.get(redirect.headers["Location"], timeout=10).content.startswith(magic)


def test_limits_apply_before_any_work_and_keys_never_reach_logs(tenants):
    deployment, _, _ = tenants
    api = deployment.system.api_url
    inputs_before = deployment.objects("t/bob/")
    too_big = requests.post(f"{api}/v1/jobs", headers=BOB, timeout=30,
                            files=[("file", ("big.jpg", b"\xff\xd8\xff" + b"0" * (2 << 20)))])
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
    assert deployment.objects("t/bob/") == inputs_before
    assert deployment.store.tenant_jobs("bob") == []
    logs = deployment.system.log("api.log") + deployment.system.log("worker-0.log")
    assert logs and not any(key in logs for key in KEYS.values())


def test_without_keys_only_loopback_clients_are_served(deploy):
    deployment = deploy()
    app = create_app(Settings.from_env(deployment.system.env))
    client = app.test_client()
    remote = client.get("/v1/jobs/" + "0" * 32, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert remote.status_code == 403 and remote.json["error"]["code"] == "forbidden"
    local = client.get("/v1/jobs/" + "0" * 32, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert local.status_code == 404 and json.loads(local.data) == NOT_FOUND
