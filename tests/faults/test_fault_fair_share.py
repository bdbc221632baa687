"""Fair share: one tenant's backlog never holds another tenant's photo for long.

Against the real system (``depthfleet api``, one Celery worker of 2 pool processes, a private
Redis, storage as below), with two API keys, alice and bob:

- alice submits 20,000 distinct small photos in one request; once her first items ran, bob
  submits one photo: it succeeds within 10 s. The same scenario with
  ``DEPTHFLEET_TENANT_WINDOW=off`` (first in, first out: every task of alice's in the broker
  ahead of bob's) leaves bob waiting well past those 10 s, so the window is what serves him.
  Cancelling alice's job drains every pending counter, the fleet's and each tenant's, to 0.
- Two jobs of one tenant are served in turn: an 8-item job submitted after a 400-item one
  finishes while most of the big one still waits.
- Quota (``DEPTHFLEET_TENANT_MAX_QUEUED_ITEMS``): alice at her quota gets 429 ``queue_full``
  with ``Retry-After``; bob is still accepted and served; one request above the quota is 413
  ``too_many_items``.
- ``Idempotency-Key``: 16 identical requests released together (multipart uploads, then JSON
  ``keys``) create exactly one job, and all 16 answers name it.

The big jobs (20,000, 400 and 1,000 photos) use ``file://`` storage with ``keys`` naming
photos written straight into the tenant's own storage folder (``<root>/t/alice/...``, which
the tenant may read: ``shared.sources.allowed_prefixes``): uploading that many objects to the
S3 server would take minutes. The idempotency test stores on the S3 server like the rest of
the fault suite.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from depthfleet.client import Client
from depthfleet.shared.jobs import JobStore
from faults.faultkit import Deployment, wait_finished, wait_progress, write_images
from support import poll

pytestmark = pytest.mark.faults

KEYS = {"alice": "ka", "bob": "kb"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
HEADERS = {tenant: {"Authorization": f"Bearer {key}"} for tenant, key in KEYS.items()}
POOL = 2  # the "2-process fleet": one worker, concurrency 2
BACKLOG = 20_000
BOB_BOUND = 10.0  # seconds from bob's submit to his photo's success
QUOTA = 1_000
CONCURRENT = 16
DRAIN_TIMEOUT = 120.0


# -- helpers ---------------------------------------------------------------------------------
def _file_deployment(deploy, tmp_path: Path, **extra: str) -> tuple[Deployment, Path]:
    """A deployment of the two tenants on ``file://`` storage; returns it and its root."""
    root = tmp_path / "storage"
    root.mkdir()
    deployment = deploy(DEPTHFLEET_API_KEYS=API_KEYS, DEPTHFLEET_STORAGE_URL=root.as_uri(),
                        **extra)
    return deployment, root


def _keys(paths: list[Path]) -> dict[str, list[str]]:
    """A ``POST /v1/jobs`` body naming files of the tenant's storage folder."""
    return {"keys": [path.as_uri() for path in paths]}


def _share_state(deployment: Deployment, *job_ids: str) -> dict[str, Any]:
    """What Redis holds of the fair share and of these jobs: the failure report's evidence."""
    r = deployment.store.redis
    state: dict[str, Any] = {}
    for key in sorted({*r.scan_iter("df:share:*"), b"df:fleet", b"df:fleet:processes"}):
        kind = r.type(key).decode()
        if kind == "zset":
            state[key.decode()] = {"card": r.zcard(key), "now": time.time(),
                                   "first": r.zrange(key, 0, 5, withscores=True)}
        elif kind == "list":
            state[key.decode()] = r.lrange(key, 0, 20)
        elif kind == "set":
            state[key.decode()] = r.smembers(key)
        elif kind == "hash":
            state[key.decode()] = r.hgetall(key)
    for job_id in job_ids:
        fields = ("total", "stored", "released", "queued", "running", "succeeded", "failed",
                  "cancelled", "ingesting", "cancel_requested")
        values = r.hmget(JobStore.job_key(job_id), fields)
        state[f"job {job_id}"] = dict(zip(fields, (v.decode() if v else None for v in values)))
    return state


def _seconds_to_success(client: Client, job_id: str, started: float, bound: float) -> float | None:
    """Seconds from ``started`` (monotonic) to the job's success; None if not by ``bound``."""
    while True:
        status = client.status(job_id)["status"]
        elapsed = time.monotonic() - started
        if status == "succeeded":
            return elapsed
        if elapsed >= bound:
            return None
        time.sleep(0.1)


def _assert_drained(deployment: Deployment, *job_ids: str, tenants=tuple(KEYS),
                    timeout: float = DRAIN_TIMEOUT) -> None:
    """The fleet's and every tenant's pending counters reach 0."""
    store = deployment.store

    def counts() -> dict[str, int]:
        return {"fleet": store.pending_items(), **{t: store.pending_items(t) for t in tenants}}

    try:
        poll(counts, lambda c: not any(c.values()), timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {_share_state(deployment, *job_ids)}") from None


def _cancelled_adds_up(client: Client, job_id: str, total: int) -> dict[str, Any]:
    final = client.status(job_id)
    assert final["status"] == "cancelled" and final["total"] == total, final
    assert final["succeeded"] + final["failed"] + final["cancelled"] == total, final
    return final


def _alice_backlog_then_bob(deployment: Deployment, root: Path) -> tuple[str, str, float | None]:
    """alice submits ``BACKLOG`` photos; once her first ones ran, bob one. Returns both job
    ids and the seconds bob's photo took to succeed (None: not within ``BOB_BOUND``)."""
    deployment.start(POOL)
    alice, bob = deployment.client(KEYS["alice"]), deployment.client(KEYS["bob"])
    began = time.monotonic()
    photos = write_images(root / "t" / "alice" / "photos", BACKLOG)
    written = time.monotonic()
    alice_job = alice.submit_json(_keys(photos))["id"]
    print(f"\n{BACKLOG} photos written in {written - began:.1f} s, "
          f"submitted in {time.monotonic() - written:.1f} s")
    wait_progress(alice, alice_job, 1, timeout=120)
    bob_photo = write_images(root / "t" / "bob" / "in", 1, first_seed=BACKLOG)
    started = time.monotonic()
    bob_job = bob.submit_files(bob_photo)["id"]
    return alice_job, bob_job, _seconds_to_success(bob, bob_job, started, BOB_BOUND)


def _at_once(requests_to_send: list[requests.PreparedRequest]) -> list[requests.Response]:
    """Send every prepared request from its own thread, all released by one barrier."""
    barrier = threading.Barrier(len(requests_to_send))

    def send(prepared: requests.PreparedRequest) -> requests.Response:
        with requests.Session() as session:
            barrier.wait()
            return session.send(prepared, timeout=120)

    with ThreadPoolExecutor(len(requests_to_send)) as pool:
        return list(pool.map(send, requests_to_send))


# -- another tenant's photo behind a 20,000-photo backlog ------------------------------------
def test_bob_is_served_within_seconds_behind_alices_20000_photos(deploy, tmp_path):
    deployment, root = _file_deployment(deploy, tmp_path)
    alice_job, bob_job, seconds = _alice_backlog_then_bob(deployment, root)
    alice = deployment.client(KEYS["alice"])
    shown = "not done" if seconds is None else f"{seconds:.2f} s"
    print(f"window auto: bob's photo succeeded after {shown} (bound {BOB_BOUND:.0f} s)")
    assert seconds is not None and seconds <= BOB_BOUND, \
        _share_state(deployment, alice_job, bob_job)
    during = alice.status(alice_job)
    assert during["total"] == BACKLOG and during["pending"] > BACKLOG // 2, during
    released = deployment.store.released(alice_job)  # her backlog waits outside the broker
    assert released < BACKLOG // 10, (released, _share_state(deployment, alice_job, bob_job))

    alice.cancel(alice_job)
    _assert_drained(deployment, alice_job, bob_job)
    final = _cancelled_adds_up(alice, alice_job, BACKLOG)
    print(f"alice: {final['succeeded']} succeeded, {final['cancelled']} cancelled")
    share = poll(lambda: _share_state(deployment, alice_job),  # nothing left to release
                 lambda s: not s.get("df:share:tenants")
                 and not s.get("df:share:alice:inflight", {}).get("card"), 30)
    assert share[f"job {alice_job}"]["stored"] == str(BACKLOG), share


def test_without_the_window_bob_waits_behind_the_backlog(deploy, tmp_path):
    """The same scenario, first in first out (``DEPTHFLEET_TENANT_WINDOW=off``): every task
    of alice's is in the broker ahead of bob's, so the test above proves the window."""
    deployment, root = _file_deployment(deploy, tmp_path, DEPTHFLEET_TENANT_WINDOW="off")
    alice_job, bob_job, seconds = _alice_backlog_then_bob(deployment, root)
    alice, bob = deployment.client(KEYS["alice"]), deployment.client(KEYS["bob"])
    assert seconds is None, f"bob served in {seconds:.2f} s without the window: " \
        "the scenario does not show what the window does"
    assert deployment.store.released(alice_job) == BACKLOG, "off sends every task at once"
    print(f"window off: bob's photo not done after {BOB_BOUND:.0f} s")

    alice.cancel(alice_job)  # her cancelled tasks still wait ahead of bob's: cancel his too
    bob.cancel(bob_job)
    _assert_drained(deployment, alice_job, bob_job)
    _cancelled_adds_up(alice, alice_job, BACKLOG)


# -- one tenant's jobs in turn ---------------------------------------------------------------
def test_two_jobs_of_one_tenant_are_served_in_turn(deploy, tmp_path):
    big, small = 400, 8
    deployment, root = _file_deployment(deploy, tmp_path)
    deployment.start(POOL)
    alice = deployment.client(KEYS["alice"])
    photos = write_images(root / "t" / "alice" / "photos", big + small)
    job_a = alice.submit_json(_keys(photos[:big]))["id"]
    job_b = alice.submit_json(_keys(photos[big:]))["id"]

    done_b = wait_finished(alice, job_b, timeout=180)
    at_b = alice.status(job_a)
    print(f"\njob B ({small} items) finished when job A had {at_b['total'] - at_b['pending']} "
          f"of {big} done")
    assert done_b["status"] == "succeeded" and done_b["succeeded"] == small, done_b
    assert at_b["pending"] >= big // 2, (at_b, _share_state(deployment, job_a, job_b))

    alice.cancel(job_a)
    _assert_drained(deployment, job_a, job_b)
    _cancelled_adds_up(alice, job_a, big)


# -- the per-tenant quota --------------------------------------------------------------------
def test_a_tenant_at_its_quota_is_refused_and_others_are_served(deploy, tmp_path):
    deployment, root = _file_deployment(deploy, tmp_path,
                                        DEPTHFLEET_TENANT_MAX_QUEUED_ITEMS=str(QUOTA))
    deployment.system.start_api()  # no worker yet: alice's items stay pending
    api = f"{deployment.system.api_url}/v1/jobs"
    store = deployment.store
    alice, bob = deployment.client(KEYS["alice"]), deployment.client(KEYS["bob"])
    photos = write_images(root / "t" / "alice" / "photos", QUOTA + 1)
    held = alice.submit_json(_keys(photos[:QUOTA]))["id"]
    assert store.pending_items("alice") == QUOTA

    refused = requests.post(api, json=_keys(photos[QUOTA:]), headers=HEADERS["alice"], timeout=30)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full", refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert store.tenant_jobs("alice") == [held], "a refused request created a job"

    bob_photos = write_images(root / "t" / "bob" / "in", QUOTA + 1, first_seed=QUOTA + 1)
    too_many = requests.post(api, json=_keys(bob_photos), headers=HEADERS["bob"], timeout=30)
    assert too_many.status_code == 413, too_many.text
    assert too_many.json()["error"]["code"] == "too_many_items", too_many.text
    assert store.tenant_jobs("bob") == []

    upload = [("file", (bob_photos[0].name, bob_photos[0].read_bytes()))]
    accepted = requests.post(api, files=upload, headers=HEADERS["bob"], timeout=30)
    assert accepted.status_code == 202, accepted.text
    bob_job = accepted.json()["id"]
    deployment.system.start_worker(concurrency=POOL)
    assert wait_finished(bob, bob_job, timeout=180)["status"] == "succeeded"

    alice.cancel(held)
    _assert_drained(deployment, held, bob_job)
    _cancelled_adds_up(alice, held, QUOTA)


# -- Idempotency-Key under concurrency -------------------------------------------------------
def test_concurrent_identical_requests_with_one_idempotency_key_create_one_job(deploy, tmp_path):
    deployment = deploy(DEPTHFLEET_API_KEYS=API_KEYS)
    deployment.start(POOL)
    api = f"{deployment.system.api_url}/v1/jobs"
    alice, store = deployment.client(KEYS["alice"]), deployment.store
    uploads = write_images(tmp_path / "uploads", 3)
    in_bucket = write_images(tmp_path / "bucket", 3, first_seed=3)
    keys = []
    for path in in_bucket:  # photos already in alice's folder of the bucket
        key = f"df/t/alice/src/{path.name}"
        deployment.s3_direct.put_object(Bucket=deployment.bucket, Key=key, Body=path.read_bytes())
        keys.append(f"s3://{deployment.bucket}/{key}")
    bodies = {
        "multipart": lambda: {"files": [("file", (p.name, p.read_bytes())) for p in uploads]},
        "keys": lambda: {"json": {"keys": keys}},
    }
    for kind, body in bodies.items():
        before = store.tenant_jobs("alice")
        headers = {**HEADERS["alice"], "Idempotency-Key": f"fair-share-{kind}"}
        answers = _at_once([requests.Request("POST", api, headers=headers, **body()).prepare()
                            for _ in range(CONCURRENT)])
        assert [a.status_code for a in answers] == [202] * CONCURRENT, \
            (kind, [a.text for a in answers if a.status_code != 202])
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1, (kind, ids)
        after = store.tenant_jobs("alice")
        assert len(after) == len(before) + 1 and set(after) - set(before) == ids, \
            (kind, before, after)
        final = wait_finished(alice, ids.pop(), timeout=120)
        assert (final["status"], final["total"], final["succeeded"]) == ("succeeded", 3, 3), \
            (kind, final)
    _assert_drained(deployment)
