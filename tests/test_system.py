"""The distributed system end to end: real API process, two real Celery worker processes, the
machine's Redis, and an S3 server process over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from conftest import BAD_DIR, PHOTOS_DIR, allowed_outcomes, load_manifest, outcome_of
from depthfleet.outputs import output_stems
from depthfleet.shared.imaging.encode import decode_pfm
from support import System, poll, running, s3_system, system_env

pytestmark = pytest.mark.integration

BUCKET = "depthfleet-it"
TENANT_KEYS = "alice:key-alice-123,bob:key-bob-456"
ALICE = {"Authorization": "Bearer key-alice-123"}
BOB = {"Authorization": "Bearer key-bob-456"}
JOB_TIMEOUT = 600


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path):
    system = s3_system(tmp_path_factory.mktemp("system"), redis_db_url, s3_server,
                       checkpoint_path, BUCKET, DEPTHFLEET_API_KEYS=TENANT_KEYS)
    with running(system):
        yield system


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, checkpoint_path) -> Path:
    """``depthfleet predict`` over every photo: the reference the system must match."""
    out = tmp_path_factory.mktemp("predict")
    env = system_env("", "", None, checkpoint_path, out / "cache")
    subprocess.run([sys.executable, "-m", "depthfleet.cli", "predict", str(PHOTOS_DIR),
                    "--out", str(out)], env=env, check=True, capture_output=True, timeout=600)
    return out


def _submit(system: System, paths: list[Path], headers=ALICE, options=None) -> dict:
    files = [("file", (p.name, p.read_bytes())) for p in paths]
    data = {"options": json.dumps(options)} if options else None
    response = requests.post(f"{system.api_url}/v1/jobs", files=files, data=data,
                             headers=headers, timeout=120)
    assert response.status_code == 202, response.text
    assert response.headers["Location"].endswith(response.json()["id"])
    return response.json()


def _wait(system: System, job_id: str, headers=ALICE) -> dict:
    return poll(lambda: requests.get(f"{system.api_url}/v1/jobs/{job_id}", headers=headers,
                                     timeout=10).json(),
                lambda s: s["pending"] == 0 and not s["ingesting"], JOB_TIMEOUT)


def _items(system: System, job_id: str, headers=ALICE) -> list[dict]:
    items, url = [], f"{system.api_url}/v1/jobs/{job_id}/items?limit=7"
    while url:
        body = requests.get(url, headers=headers, timeout=10).json()
        items += body["items"]
        url = body["next"]
    return items


def _get(url: str, headers=ALICE) -> bytes:
    response = requests.get(url, headers=headers, timeout=60)
    assert response.status_code == 200, (url, response.status_code)
    return response.content


def test_every_photo_matches_predict(system, predicted):
    photos = load_manifest(PHOTOS_DIR)
    job = _submit(system, [PHOTOS_DIR / p["file"] for p in photos])
    assert job["status"] == "queued" and job["total"] == len(photos)
    final = _wait(system, job["id"])
    assert final["status"] == "succeeded", final
    assert final["succeeded"] == len(photos) and final["progress"] == 1.0
    by_name = {item["name"]: item for item in _items(system, job["id"])}
    stems = output_stems(p["file"] for p in photos)
    for photo in photos:
        item = by_name[photo["file"]]
        assert (item["width"], item["height"]) == (photo["width"], photo["height"])
        png = cv2.imdecode(np.frombuffer(_get(item["artifacts"]["depth_png"]), np.uint8),
                           cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (photo["height"], photo["width"])
        heat = cv2.imdecode(np.frombuffer(_get(item["artifacts"]["heatmap_png"]), np.uint8),
                            cv2.IMREAD_UNCHANGED)
        assert heat.shape == (photo["height"], photo["width"], 3)
        ours = decode_pfm(_get(item["artifacts"]["depth_pfm"]))
        reference = decode_pfm((predicted / f"{stems[photo['file']]}.depth.pfm").read_bytes())
        span = float(reference.max() - reference.min()) or 1.0
        assert np.abs(ours - reference).max() / span <= 1e-4, photo["file"]


def test_mixed_batch_is_partial_with_reasons(system):
    photos = load_manifest(PHOTOS_DIR)[:4]
    bad = load_manifest(BAD_DIR)
    job = _submit(system, [PHOTOS_DIR / p["file"] for p in photos] +
                  [BAD_DIR / b["file"] for b in bad])
    final = _wait(system, job["id"])
    items = {item["name"]: item for item in _items(system, job["id"])}
    assert final["status"] == "partial"
    for photo in photos:
        assert items[photo["file"]]["status"] == "succeeded"
    for entry in bad:
        item = items.get(entry["file"]) or items["photo.jpg"]  # a zip is unpacked by content
        assert outcome_of(item) in allowed_outcomes(entry), (entry["file"], item)
        if item["status"] == "failed":
            assert item["error"]["message"]
        elif "width" in entry:
            assert (item["width"], item["height"]) == (entry["width"], entry["height"])


def test_single_bad_upload_is_refused_with_its_code(system):
    """What the header shows is refused at once (4xx); damage inside the pixel data is found
    by the worker (the API never decodes pixels), and the item fails with the same code."""
    refused_at_once = 0
    for entry in load_manifest(BAD_DIR):
        allowed = allowed_outcomes(entry)
        if "accept" in allowed:
            continue
        path = BAD_DIR / entry["file"]
        response = requests.post(f"{system.api_url}/v1/jobs", headers=ALICE, timeout=60,
                                 files=[("file", (path.name, path.read_bytes()))])
        if response.status_code == 202:
            _wait(system, response.json()["id"])
            (item,) = _items(system, response.json()["id"])
            assert outcome_of(item) in allowed, (entry["file"], item)
            assert item["error"]["code"] == "corrupt_image", (entry["file"], item)
            continue
        refused_at_once += 1
        assert 400 <= response.status_code < 500, (entry["file"], response.status_code)
        assert f"reject: {response.json()['error']['code']}" in allowed, (entry["file"], response.text)
    assert refused_at_once >= 5


def test_tenants_are_isolated_and_auth_required(system):
    job = _submit(system, [PHOTOS_DIR / "tiny_8x8.jpg"])
    _wait(system, job["id"])
    base = f"{system.api_url}/v1/jobs/{job['id']}"
    item = _items(system, job["id"])[0]
    for url in (base, f"{base}/items", f"{base}/manifest.jsonl", item["artifacts"]["depth_png"]):
        assert requests.get(url, headers=BOB, timeout=10).status_code == 404, url
        assert requests.get(url, timeout=10).status_code == 401, url
        assert requests.get(url, headers={"Authorization": "Bearer nope"},
                            timeout=10).status_code == 401
    assert requests.delete(base, headers=BOB, timeout=10).status_code == 404
    assert requests.post(f"{base}/retry", headers=BOB, timeout=10).status_code == 404
    unknown = requests.get(f"{system.api_url}/v1/jobs/{'0' * 32}", headers=ALICE, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_manifest_streams_one_line_per_item(system):
    job = _submit(system, [PHOTOS_DIR / "tiny_8x8.jpg", PHOTOS_DIR / "tiny_1x1.png",
                           BAD_DIR / "empty.jpg"])
    _wait(system, job["id"])
    text = requests.get(f"{system.api_url}/v1/jobs/{job['id']}/manifest.jsonl", headers=ALICE,
                        timeout=10).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[2]["error"]["code"] == "empty_file"


def test_max_side_and_outputs_options(system):
    job = _submit(system, [PHOTOS_DIR / "coffee.jpg"],
                  options={"outputs": ["depth_png"], "max_side": 300})
    assert job["options"]["outputs"] == ["depth_png", "depth_raw", "heatmap_preview", "thumbnail",
                                         "photo"]
    assert _wait(system, job["id"])["status"] == "succeeded"
    item = _items(system, job["id"])[0]
    assert set(item["artifacts"]) == {"depth_png", "depth_pfm", "heatmap_png", "depth_raw",
                                      "heatmap_preview", "thumbnail", "photo"}  # others on read
    png = cv2.imdecode(np.frombuffer(_get(item["artifacts"]["depth_png"]), np.uint8),
                       cv2.IMREAD_UNCHANGED)
    assert png.shape == (200, 300)
