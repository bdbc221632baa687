"""Whole archives: zip/tar uploads, bucket prefixes past one listing page, deduplication,
cancelling, and a ``depthfleet submit`` that is killed and restarted. Real processes throughout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
import redis
import requests

from conftest import BAD_DIR, PHOTOS_DIR, allowed_outcomes, load_manifest, outcome_of
from depthfleet.shared.layout import MODELS_PREFIX
from support import System, build_archive, poll, running, s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

BUCKET = "depthfleet-bulk"
HEADERS = {"Authorization": "Bearer key-carol"}
JOB_TIMEOUT = 600


@pytest.fixture(scope="module")
def s3(s3_server):
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path):
    system = s3_system(tmp_path_factory.mktemp("bulk"), redis_db_url, s3_server,
                       checkpoint_path, BUCKET, DEPTHFLEET_API_KEYS="carol:key-carol",
                       DEPTHFLEET_TENANT_SOURCES=f"carol=s3://{BUCKET}/archive/",
                       DEPTHFLEET_ITEMS_PER_TASK="16")
    with running(system, workers=(2,)):
        yield system


@pytest.fixture()
def stats(redis_db_url):
    client = redis.Redis.from_url(redis_db_url)
    return lambda name: int(client.hget("df:stats", name) or 0)


def submit(system: System, **kwargs) -> dict:
    response = requests.post(f"{system.api_url}/v1/jobs", headers=HEADERS, timeout=300, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()


def wait(system: System, job_id: str) -> dict:
    return poll(lambda: requests.get(f"{system.api_url}/v1/jobs/{job_id}", headers=HEADERS,
                                     timeout=10).json(),
                lambda s: s["pending"] == 0 and not s["ingesting"], JOB_TIMEOUT)


def manifest(system: System, job_id: str) -> list[dict]:
    text = requests.get(f"{system.api_url}/v1/jobs/{job_id}/manifest.jsonl", headers=HEADERS,
                        timeout=60).text
    return [json.loads(line) for line in text.splitlines()]


def photo_archive(kind: str) -> bytes:
    """The reference photos, three bad files, a traversal name and a link, as zip or tar.gz."""
    members = {f"photos/{p['file']}": (PHOTOS_DIR / p["file"]).read_bytes()
               for p in load_manifest(PHOTOS_DIR)[:6]}
    members |= {f"bad/{b}": (BAD_DIR / b).read_bytes()
                for b in ("empty.jpg", "plain_text.txt", "truncated_40pct.jpg")}
    members["../evil.jpg"] = (PHOTOS_DIR / "tiny_8x8.jpg").read_bytes()
    return build_archive(members, kind)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_upload_processes_good_entries_and_reports_bad_ones(system, s3, kind):
    job = submit(system, files=[("file", (f"batch.{kind}", photo_archive(kind)))])
    final = wait(system, job["id"])
    items = {item["name"]: item for item in manifest(system, job["id"])}
    assert final["status"] == "partial" and final["total"] == len(items) == 11
    for photo in load_manifest(PHOTOS_DIR)[:6]:
        assert items[f"photos/{photo['file']}"]["status"] == "succeeded"
    for name in ("empty.jpg", "plain_text.txt", "truncated_40pct.jpg"):
        entry = next(e for e in load_manifest(BAD_DIR) if e["file"] == name)
        assert outcome_of(items[f"bad/{name}"]) in allowed_outcomes(entry)
    assert items["../evil.jpg"]["error"]["code"] == "unsafe_path"
    assert items["link.jpg"]["error"]["code"] == "unsupported_entry"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    # (df/models/: the exported model the first worker shares with the fleet)
    assert keys and all(k.startswith(("df/t/carol/", "archive/", f"df/{MODELS_PREFIX}"))
                        for k in keys), keys
    assert not any("evil" in k or "passwd" in k for k in keys)


def test_bucket_prefix_past_one_listing_page_becomes_one_job(system, s3, stats):
    count, distinct = 2500, 50
    blobs = [tiny_jpeg(seed) for seed in range(distinct)]
    for i in range(count):
        s3.put_object(Bucket=BUCKET, Key=f"archive/scan/{i:05d}.jpg", Body=blobs[i % distinct])
    runs_before = stats("model_runs")
    job = submit(system, json={"source": f"s3://{BUCKET}/archive/scan/"})
    assert job["status"] == "queued" and job["ingesting"] is True
    final = wait(system, job["id"])
    assert final["status"] == "succeeded" and final["succeeded"] == final["total"] == count
    lines = manifest(system, job["id"])
    assert len(lines) == count and [line["index"] for line in lines] == list(range(count))
    assert {line["name"] for line in lines} == {f"{i:05d}.jpg" for i in range(count)}
    assert stats("model_runs") - runs_before == distinct
    assert final["reused"] == count - distinct


def test_hundred_copies_run_the_model_once(system, stats):
    photo = tiny_jpeg(999, (120, 160))
    runs_before = stats("model_runs")
    job = submit(system, files=[("file", (f"copy{i}.jpg", photo)) for i in range(100)])
    final = wait(system, job["id"])
    assert final["succeeded"] == 100
    assert stats("model_runs") - runs_before == 1
    items = manifest(system, job["id"])
    assert sum(item["reused"] for item in items) == 99
    first = items[0]["artifacts"]["depth_png"]
    reference = requests.get(first, headers=HEADERS, timeout=30).content
    for item in items[1:]:
        assert requests.get(item["artifacts"]["depth_png"], headers=HEADERS,
                            timeout=30).content == reference


def test_cancel_stops_a_bulk_job_and_counts_add_up(system, s3):
    for i in range(1200):
        s3.put_object(Bucket=BUCKET, Key=f"archive/cancel/{i:05d}.jpg", Body=tiny_jpeg(10_000 + i))
    job = submit(system, json={"source": f"s3://{BUCKET}/archive/cancel/"})
    poll(lambda: requests.get(f"{system.api_url}/v1/jobs/{job['id']}", headers=HEADERS,
                              timeout=10).json(), lambda s: s["succeeded"] >= 5, 120, 0.2)
    started = time.monotonic()
    cancelled = requests.delete(f"{system.api_url}/v1/jobs/{job['id']}", headers=HEADERS,
                                timeout=60)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert time.monotonic() - started < 10
    final = wait(system, job["id"])
    assert final["status"] == "cancelled"
    assert final["succeeded"] + final["failed"] + final["cancelled"] == final["total"]
    assert final["cancelled"] > 0


def test_source_outside_the_tenants_prefixes_is_refused(system):
    for source in (f"s3://{BUCKET}/df/t/other/", "s3://another-bucket/photos/",
                   f"s3://{BUCKET}/archive/../df/"):
        response = requests.post(f"{system.api_url}/v1/jobs", headers=HEADERS, timeout=10,
                                 json={"source": source})
        assert response.status_code in (400, 403), (source, response.text)
    response = requests.post(f"{system.api_url}/v1/jobs", headers=HEADERS, timeout=10,
                             json={"keys": ["https://example.com/a.jpg"]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_source"


def test_submit_killed_halfway_resumes_without_duplicate_uploads(system, tmp_path, stats):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(120):
        (folder / f"{i:03d}.jpg").write_bytes(tiny_jpeg(20_000 + i, (900, 1200), "large_24mp.jpg"))
    env = {**system.env, "DEPTHFLEET_API_KEY": "key-carol",
           "DEPTHFLEET_CACHE_DIR": str(tmp_path / "client-cache")}
    command = [sys.executable, "-m", "depthfleet.cli", "submit", str(folder), "--server",
               system.api_url, "--wait", "--out", str(tmp_path / "out")]
    stored_before, repeated_before = stats("uploads_stored"), stats("uploads_repeated")
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    poll(lambda: {"stored": stats("uploads_stored") - stored_before},
         lambda s: s["stored"] >= 30 or first.poll() is not None, 120, 0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert stats("uploads_stored") - stored_before < 120, "killed too late to test a resume"
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert stats("uploads_stored") - stored_before == 120
    assert stats("uploads_repeated") - repeated_before == 0
    lines = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 120 and all(line["status"] == "succeeded" for line in lines)
    assert all((tmp_path / "out" / line["artifacts"]["depth_png"]).is_file() for line in lines)


def test_large_archive_goes_straight_to_storage_then_expands(system):
    grant = requests.post(f"{system.api_url}/v1/uploads/presign", headers=HEADERS, timeout=10,
                          json={"filename": "scans.tar.gz"})
    assert grant.status_code == 201, grant.text
    upload = requests.put(grant.json()["url"], data=photo_archive("tar.gz"), timeout=60)
    assert upload.status_code == 200
    job = submit(system, json={"keys": [grant.json()["source"]]})
    final = wait(system, job["id"])
    names = {item["name"]: item["status"] for item in manifest(system, job["id"])}
    assert final["total"] == 11 and final["succeeded"] == 6
    assert names["scans.tar.gz/photos/coffee.jpg"] == "succeeded"
    refused = requests.post(f"{system.api_url}/v1/uploads/presign", headers=HEADERS, timeout=10,
                            json={"filename": "../x.zip"})
    assert refused.status_code == 400
