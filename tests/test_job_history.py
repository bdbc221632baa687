"""Issue #15's API through the fleet: the job list, results.zip, originals' previews, signed links.

One real system (gunicorn API process, two Celery worker processes, the machine's Redis, moto
S3 over HTTP) with two tenants shows that:

1. ``GET /v1/jobs`` lists the caller's jobs only, newest first, in stable pages, and never a
   job whose record expired;
2. ``results.zip`` holds each succeeded item's files named like ``depthfleet fetch`` names
   them (archive paths kept, colliding stems and repeated names told apart), with the bytes
   of the single downloads, plus ``failures.json``; another tenant gets 404;
3. every item, archive entries included, stores ``photo.jpg`` (the upright original, longer
   side <= 2048) beside ``thumbnail.jpg`` (<= 512), listed among its artifacts;
4. signed ``links`` open without an API key (``?download=1`` names the file after the photo)
   and nothing else does;
5. a 2,500-item job's results.zip streams with flat API memory.

About 5 minutes on 2 cores: the workers take ~2 of them for the 2,500 items (25 computed,
the rest reused), and reading 10,000 objects back from moto for the ZIP ~2 more.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import cv2
import numpy as np
import pytest
import redis
import requests

from conftest import PHOTOS_DIR
from depthfleet.outputs import output_stems
from depthfleet.shared.artifacts import ARTIFACTS, COMPACT
from support import System, build_archive, poll, running, s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

BUCKET = "depthfleet-history"
KEYS = {"alice": "key-alice-history", "bob": "key-bob-history"}
LINK_SECRET = "history-test-secret"
JOB_TIMEOUT = 600
BULK_ITEMS = 2_500
BULK_DISTINCT = 25  # distinct photos among them; the rest are the fleet's reused results
FLAT_MB = 40  # API memory growth allowed while streaming the bulk job's results.zip


def auth(tenant: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
    system = s3_system(tmp_path_factory.mktemp("history"), redis_db_url, s3_server,
                       checkpoint_path, BUCKET, DEPTHFLEET_API_KEYS=keys,
                       DEPTHFLEET_LINK_SECRET=LINK_SECRET)
    with running(system):
        yield system


def submit(system: System, parts: list[tuple[str, bytes]], tenant: str = "alice") -> dict:
    response = requests.post(f"{system.api_url}/v1/jobs", headers=auth(tenant), timeout=120,
                             files=[("file", part) for part in parts])
    assert response.status_code == 202, response.text
    return response.json()


def wait(system: System, job_id: str, tenant: str = "alice") -> dict:
    return poll(lambda: requests.get(f"{system.api_url}/v1/jobs/{job_id}", headers=auth(tenant),
                                     timeout=10).json(),
                lambda s: s["pending"] == 0 and not s["ingesting"], JOB_TIMEOUT)


def items(system: System, job_id: str, tenant: str = "alice") -> list[dict]:
    found, url = [], f"{system.api_url}/v1/jobs/{job_id}/items?limit=1000"
    while url:
        body = requests.get(url, headers=auth(tenant), timeout=30).json()
        found += body["items"]
        url = body["next"]
    return found


def get(url: str, headers: dict | None = None, **params: str) -> requests.Response:
    return requests.get(url, headers=auth() if headers is None else headers, params=params,
                        timeout=120)


def job_list(system: System, tenant: str, **params: str) -> list[dict]:
    """Every job of the list, page by page (each page checked to be at most ``limit``)."""
    jobs, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = get(f"{system.api_url}/v1/jobs", auth(tenant), **query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["jobs"]) <= int(params.get("limit", 20))
        jobs += body["jobs"]
        cursor = body["next_cursor"]
        if cursor is None:
            return jobs


def read_zip(response: requests.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return archive


# -- 1. the job list -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def listed_jobs(system) -> dict[str, list[str]]:
    """Five jobs of alice's and two of bob's, interleaved, each finished; ids oldest first."""
    created: dict[str, list[str]] = {"alice": [], "bob": []}
    for n, tenant in enumerate(["alice", "bob", "alice", "alice", "bob", "alice", "alice"]):
        job = submit(system, [(f"list-{n}.jpg", tiny_jpeg(100 + n))], tenant)
        created[tenant].append(job["id"])
    for tenant, ids in created.items():
        for job_id in ids:
            wait(system, job_id, tenant)
    return created


def test_job_list_is_the_callers_newest_first_in_pages(system, listed_jobs):
    alice = job_list(system, "alice", limit="2")
    ids = [job["id"] for job in alice]
    assert ids[:5] == listed_jobs["alice"][::-1], "newest first, every job once"
    assert not set(ids) & set(listed_jobs["bob"])
    assert [j["id"] for j in job_list(system, "bob")][:2] == listed_jobs["bob"][::-1]
    assert not {j["id"] for j in job_list(system, "bob")} & set(listed_jobs["alice"])
    for summary in alice[:5]:  # the same summary as GET /v1/jobs/{id}
        single = get(summary["links"]["self"]).json()
        assert {k: v for k, v in summary.items() if k != "links"} == \
            {k: v for k, v in single.items() if k != "links"}
        assert summary["status"] == "succeeded" and summary["total"] == summary["succeeded"] == 1


def test_a_cursor_is_stable_while_jobs_are_created(system, listed_jobs):
    first = get(f"{system.api_url}/v1/jobs", limit="2").json()
    newer = submit(system, [("newer.jpg", tiny_jpeg(300))])
    rest = job_list(system, "alice", limit="2")  # from the top: the new job comes first
    assert rest[0]["id"] == newer["id"]
    page = get(f"{system.api_url}/v1/jobs", limit="2", cursor=first["next_cursor"]).json()
    assert [j["id"] for j in page["jobs"]] == listed_jobs["alice"][::-1][2:4]
    wait(system, newer["id"])


def test_bad_limits_and_cursors_are_refused(system):
    for query in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"limit": "-1"},
                  {"cursor": "nonsense"}, {"cursor": "1.5-" + "g" * 32}, {"cursor": ""}):
        response = get(f"{system.api_url}/v1/jobs", **query)
        assert response.status_code == 400, (query, response.text)
        code = "invalid_limit" if "limit" in query else "invalid_cursor"
        assert response.json()["error"]["code"] == code
    assert len(get(f"{system.api_url}/v1/jobs", limit="100").json()["jobs"]) <= 100


def test_expired_jobs_leave_the_list(system, listed_jobs, redis_db_url):
    """A job record Redis expired (its keys gone, as the TTL does) is not listed, and the list
    drops it for good."""
    gone = listed_jobs["alice"][1]
    client = redis.Redis.from_url(redis_db_url)
    assert client.delete(f"df:job:{gone}", f"df:job:{gone}:items") == 2
    assert gone not in {j["id"] for j in job_list(system, "alice", limit="3")}
    assert client.zscore("df:tenant:alice:jobs", gone) is None
    assert client.zscore("df:tenant:alice:jobs", listed_jobs["alice"][0]) is not None
    assert get(f"{system.api_url}/v1/jobs/{gone}").status_code == 404


# -- 2-4. results.zip, previews, signed links ----------------------------------------------
def _photo(name: str) -> bytes:
    return (PHOTOS_DIR / name).read_bytes()


@pytest.fixture(scope="module")
def mixed_job(system) -> tuple[dict, list[dict]]:
    """Photos, a bad file, colliding stems, a repeated name, and an archive with folders."""
    archive = build_archive({"album/x.jpg": tiny_jpeg(1, (96, 128)),
                             "album/deeper/y.jpg": tiny_jpeg(2, (96, 128))}, "zip")
    job = submit(system, [
        ("coffee.jpg", _photo("coffee.jpg")),
        ("rotated.jpg", _photo("exif_orientation6.jpg")),
        ("large.jpg", _photo("large_24mp.jpg")),
        ("cat.jpg", tiny_jpeg(3)), ("cat.png", cv2.imencode(".png", np.full((40, 30, 3), 90,
                                                                         np.uint8))[1].tobytes()),
        ("same.jpg", tiny_jpeg(4)), ("same.jpg", tiny_jpeg(5)),
        ("broken.jpg", b"this is no image at all"),
        ("scans.zip", archive),
    ])
    final = wait(system, job["id"])
    assert final["failed"] >= 2 and final["succeeded"] == 9, final  # broken.jpg, link.jpg
    return final, items(system, job["id"])


def by_name(job_items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in job_items}


EXPECTED_STEMS = {  # item name -> stem of its files in results.zip (as `depthfleet fetch`)
    "coffee.jpg": "coffee", "rotated.jpg": "rotated", "large.jpg": "large",
    "cat.jpg": "cat.jpg", "cat.png": "cat.png", "album/x.jpg": "album/x",
    "album/deeper/y.jpg": "album/deeper/y",
}


def test_results_zip_holds_the_stored_files_named_like_fetch(system, mixed_job):
    final, job_items = mixed_job
    archive = read_zip(get(final["links"]["results_zip"], headers={}))  # signed: no key needed
    names = set(archive.namelist())
    succeeded = [i for i in job_items if i["status"] == "succeeded"]
    stored = final["options"]["outputs"]
    assert set(stored) == set(COMPACT) and "photo" in stored
    same = sorted(i["index"] for i in succeeded if i["name"] == "same.jpg")
    stems = {**EXPECTED_STEMS}
    expected = {f"{stems[n]}.{ARTIFACTS[a].filename}" for n in stems for a in stored}
    expected |= {f"same.{ARTIFACTS[a].filename}" for a in stored}
    expected |= {f"same~{same[1]}.{ARTIFACTS[a].filename}" for a in stored}
    assert names == expected | {"failures.json"}
    fetch_stems = output_stems(i["name"] for i in job_items)  # what `depthfleet fetch` uses
    assert {n: fetch_stems[n] for n in EXPECTED_STEMS} == EXPECTED_STEMS
    for item in succeeded:
        stem = stems.get(item["name"]) or ("same" if item["index"] == same[0] else
                                           f"same~{same[1]}")
        for artifact in stored:
            single = get(item["artifacts"][artifact], inline="1")
            assert single.status_code == 200
            assert archive.read(f"{stem}.{ARTIFACTS[artifact].filename}") == single.content
    failures = json.loads(archive.read("failures.json"))
    assert {(f["name"], f["error"]["code"]) for f in failures} >= {("broken.jpg", "not_an_image")}
    assert all(f["status"] == "failed" and f["error"]["message"] for f in failures)


def test_results_zip_renders_full_size_outputs_on_read(system, mixed_job):
    final, job_items = mixed_job
    archive = read_zip(get(final["links"]["results_zip"], auth(), outputs="depth_png,heatmap_png"))
    small = [i for i in job_items if i["name"] in ("coffee.jpg", "album/x.jpg", "rotated.jpg")]
    for item in small:
        stem = EXPECTED_STEMS[item["name"]]
        for artifact in ("depth_png", "heatmap_png"):
            single = get(item["artifacts"][artifact], inline="1").content
            assert archive.read(f"{stem}.{ARTIFACTS[artifact].filename}") == single
    assert not [n for n in archive.namelist() if n.endswith((".tiff", ".jpg"))]
    assert archive.getinfo("coffee.depth.png").compress_type == zipfile.ZIP_STORED


def test_results_zip_is_the_owners_only(system, mixed_job):
    final, _ = mixed_job
    url = f"{system.api_url}/v1/jobs/{final['id']}/results.zip"
    assert get(url, auth("bob")).status_code == 404
    assert get(url, auth("bob")).json()["error"]["code"] == "not_found"
    assert get(url, {}).status_code == 401  # no key, no signature
    refused = get(url, auth(), outputs="depth_png,nonsense")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_outputs"


def test_originals_are_stored_for_every_item(system, mixed_job):
    """photo.jpg (<= 2048 px, upright) and thumbnail.jpg (<= 512) for uploads and archive
    entries alike, served by the artifact route and listed in the item's artifacts."""
    _, job_items = mixed_job
    items_by_name = by_name(job_items)
    for name, item in items_by_name.items():
        if item["status"] != "succeeded":
            continue
        assert {"photo", "thumbnail"} <= set(item["artifacts"]), name
        for artifact, side in (("photo", 2048), ("thumbnail", 512)):
            response = get(item["artifacts"][artifact], inline="1")
            assert response.headers["Content-Type"] == "image/jpeg"
            pixels = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
            height, width = pixels.shape[:2]
            assert max(width, height) <= side, (name, artifact, width, height)
            assert (width > height) == (item["width"] > item["height"]), (name, "upright")
            if max(item["width"], item["height"]) <= side:
                assert (width, height) == (item["width"], item["height"])
    large = items_by_name["large.jpg"]
    photo = get(large["artifacts"]["photo"], inline="1").content
    assert max(cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR).shape) > 1024
    rotated = items_by_name["rotated.jpg"]
    assert rotated["height"] > rotated["width"], "exif_orientation6.jpg is a portrait upright"


def test_signed_links_open_without_a_key_and_name_the_photo(system, mixed_job):
    _, job_items = mixed_job
    item = by_name(job_items)["album/x.jpg"]
    assert item["name"] == "album/x.jpg"  # the original path, for naming downloads
    link = item["links"]["depth_png"]
    assert get(item["artifacts"]["depth_png"], {}).status_code == 401
    opened = get(link, {}, inline="1")
    assert opened.status_code == 200
    assert opened.content == get(item["artifacts"]["depth_png"], inline="1").content
    download = get(link, {}, download="1")
    assert download.status_code == 200 and download.content == opened.content
    assert download.headers["Content-Disposition"] == 'attachment; filename=x.depth.png'
    photo = get(item["links"]["photo"], {}, download="1").headers["Content-Disposition"]
    assert photo == "attachment; filename=x.photo.jpg"
    redirected = requests.get(link, allow_redirects=False, timeout=30)  # S3: presigned
    assert redirected.status_code == 302


def _with_query(link: str, **changes: str) -> str:
    parts = urlparse(link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts._replace(query=urlencode({**query, **changes})).geturl()


def test_altered_or_expired_links_are_refused(system, mixed_job):
    from depthfleet.api.signing import _signature

    final, job_items = mixed_job
    link = by_name(job_items)["coffee.jpg"]["links"]["thumbnail"]
    query = {k: v[0] for k, v in parse_qs(urlparse(link).query).items()}
    assert query["tenant"] == "alice" and int(query["expires"]) >= time.time() + 3600 - 60
    for changed in ({"tenant": "bob"}, {"expires": str(int(query["expires"]) + 60)},
                    {"sig": "0" * 64}, {"expires": "soon"}):
        response = get(_with_query(link, **changed), {})
        assert response.status_code == 401, changed
        assert response.json()["error"]["code"] == "invalid_link"
    index = by_name(job_items)["coffee.jpg"]["index"]
    other_item = link.replace(f"/items/{index}/", f"/items/{index + 1}/")
    assert other_item != link and get(other_item, {}).status_code == 401
    path = urlparse(link).path
    expired = int(time.time()) - 5
    stale = _with_query(link, expires=str(expired),
                        sig=_signature(LINK_SECRET.encode(), "alice", path, expired))
    assert get(stale, {}).json()["error"]["code"] == "link_expired"
    bob_job = f"{system.api_url}/v1/jobs/{final['id']}"  # a link is no key for other routes
    assert get(_with_query(bob_job, **{k: query[k] for k in ("tenant", "expires", "sig")}),
               {}).status_code == 401


# -- 5. a 2,500-item job streamed -------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _api_processes(system: System) -> list[int]:
    """The gunicorn workers (children of the master ``depthfleet api`` execs)."""
    assert system.api is not None
    children = Path(f"/proc/{system.api.pid}/task/{system.api.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


@pytest.fixture(scope="module")
def bulk_job(system) -> dict:
    """2,500 items through the public API: 25 distinct tiny photos uploaded once each
    (content-addressed), named 100 times each; workers compute 25 and reuse the rest."""
    photos = [tiny_jpeg(500 + n) for n in range(BULK_DISTINCT)]
    digests = [hashlib.sha256(p).hexdigest() for p in photos]
    for photo, digest in zip(photos, digests):
        put = requests.put(f"{system.api_url}/v1/uploads/{digest}", data=photo, headers=auth(),
                           timeout=60)
        assert put.status_code in (200, 201), put.text
    uploads = [{"name": f"roll-{n // 100:02}/frame-{n:04}.jpg", "sha256": digests[n % BULK_DISTINCT]}
               for n in range(BULK_ITEMS)]
    created = requests.post(f"{system.api_url}/v1/jobs", json={"uploads": uploads},
                            headers=auth(), timeout=120)
    assert created.status_code == 202, created.text
    final = wait(system, created.json()["id"])
    assert final["succeeded"] == BULK_ITEMS, final
    return final


def test_a_2500_item_results_zip_streams_with_flat_memory(system, bulk_job, mixed_job, tmp_path):
    read_zip(get(mixed_job[0]["links"]["results_zip"], auth()))  # warm: imports, pools
    pids = _api_processes(system)
    before = {pid: _rss_mb(pid) for pid in pids}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for pid in pids:
                peak[pid] = max(peak[pid], _rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    target, size, started = tmp_path / "bulk.zip", 0, time.monotonic()
    with requests.get(bulk_job["links"]["results_zip"], stream=True, timeout=600) as response:
        assert response.status_code == 200
        assert "Content-Length" not in response.headers  # streamed, not built first
        with target.open("wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
                size += len(chunk)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    growth = max(peak[pid] - before[pid] for pid in pids)
    print(f"\nresults.zip of {BULK_ITEMS} items: {size / 1e6:.0f} MB in {seconds:.1f} s; API "
          f"workers' RSS before {sorted(before.values())} MB, peak {sorted(peak.values())} MB,"
          f" growth {growth:.1f} MB")
    assert size > 5 * FLAT_MB * 1e6, "the archive must dwarf the memory bound to prove it"
    assert growth < FLAT_MB, (before, peak)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        assert len(names) == BULK_ITEMS * len(COMPACT), len(names)
        assert "roll-24/frame-2499.photo.jpg" in names and "failures.json" not in names
        first, last = archive.read("roll-00/frame-0000.photo.jpg"), \
            archive.read(f"roll-24/frame-{BULK_ITEMS - BULK_DISTINCT:04}.photo.jpg")
        assert first == last, "the same photo, the same preview"
