"""A burst of full-size downloads: 50 distinct 12 MP depth.png renders asked for at once.

Compact results store what the network computed; ``depth.png`` is rendered by the API on
first read (``api.renders``) in ``DEPTHFLEET_RENDER_THREADS`` (default 1) native threads per
API process. The load to survive is many *distinct* renders at once, which single-flight
cannot merge: each is a 48 MB float map and a ~10 MB PNG, so 50 rendered together would need
2.5 GB and more, and rendering on the event loop would stall every other request.

So: one job of ``ITEMS`` = 50 distinct 4032x3024 photos (the issue's 50 downloads, each its
own render), then 50 concurrent GETs of their depth.png, one per item: half redirected to a
presigned S3 URL (followed, as browsers and requests do), half ``?inline=1`` (streamed
through the API). Meanwhile another tenant's client, in its own process so that the test's
download threads cannot hold its GIL, polls its small job's status back to back. Checked:

- every download is 200 with exactly the bytes ``render_full_size`` makes from the item's
  served ``depth_raw.tiff``: a 16-bit 4032x3024 PNG; each of the 50 was rendered and stored
  once; the redirects went to presigned S3 URLs, the inline answers came from the API;
- the other client's status polls during the burst: p99 < 100 ms (issue #13);
- API memory: no gunicorn process's peak RSS (VmHWM, reset before the burst) exceeds its RSS
  before by ``RSS_GROWTH_MB``. One render in flight per process fits (100-135 MB measured);
  25 at once per process (DEPTHFLEET_RENDER_THREADS=25) peaked at 1.7 GB.

The API is ``depthfleet api`` with its defaults (2 gevent processes, 1 render thread each);
one Celery worker of 2 pool processes; a private Redis; moto S3. 30-35 s on an idle 2-core
machine, 50-100 s when other work shares it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from bench.workloads import BIG_QUALITY, BIG_SIZE, make_big
from depthfleet.shared.artifacts import raw_depth, render_full_size
from faults.faultkit import (Deployment, all_items, live_pool_pids, wait_finished, wait_for_pool,
                             write_images)

pytestmark = pytest.mark.faults

ITEMS = 50  # distinct photos, one download each: 50 concurrent full-size downloads (#13)
BASES = 5  # camera-like photos from make_big; the others are shifted copies of them
SHIFT = 131  # pixels per copy: other content, so another depth map for every item
KEYS = {"burst": "key-burst-4b7e1d9a", "poller": "key-poller-8c2f6e0b"}
POLL_P99_MS = 100  # another client's status polls while the burst renders (#13)
RSS_GROWTH_MB = 300  # per API process: one ~100 MB render in flight fits, three do not
BASELINE_SECONDS = 1.0  # the poller alone first, for the report's "before"
DOWNLOAD_TIMEOUT = 120.0

Sample = tuple[float, float, int]  # a status poll: wall-clock start, seconds, HTTP status


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture()
def deployment(deploy) -> Iterator[Deployment]:
    """Two tenants; the ~600 MB the test stores leave the session's S3 server afterwards."""
    deployment = deploy(DEPTHFLEET_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()))
    yield deployment
    keys = deployment.objects("")
    for start in range(0, len(keys), 1000):
        deployment.s3_direct.delete_objects(Bucket=deployment.bucket, Delete={"Objects": [
            {"Key": f"df/{key}"} for key in keys[start:start + 1000]]})


def distinct_big_photos(folder: Path, count: int) -> list[Path]:
    """``count`` 12 MP JPEGs, no two alike in bytes or depth map.

    ``make_big`` costs ~1 s a photo (its grain); shifting ``BASES`` of them sideways by a
    different amount each makes the rest in ~0.2 s each, camera-like still.
    """
    bases = [cv2.imread(str(path)) for path in make_big(folder / "bases", BASES)]

    def write(index: int) -> Path:
        path = folder / f"photo-{index:03d}.jpg"
        cv2.imwrite(str(path), np.roll(bases[index % BASES], (index // BASES) * SHIFT, axis=1),
                    [cv2.IMWRITE_JPEG_QUALITY, BIG_QUALITY])
        return path

    with ThreadPoolExecutor(2) as pool:  # OpenCV encodes without the GIL
        return list(pool.map(write, range(count)))


# -- the other client ------------------------------------------------------------------------
def poll_status(url: str, headers: dict[str, str], ready, stop, results) -> None:
    """Its job's status, back to back on one kept-alive connection, until ``stop``; puts its
    samples on ``results``. Runs in a process of its own."""
    samples: list[Sample] = []
    with requests.Session() as session:
        session.headers.update(headers)
        while not stop.is_set():
            started, tick = time.time(), time.perf_counter()
            try:
                code = session.get(url, timeout=10).status_code
            except requests.RequestException:
                code = 0
            samples.append((started, time.perf_counter() - tick, code))
            ready.set()
            time.sleep(0.01)
    results.put(samples)


@contextmanager
def other_client(url: str, headers: dict[str, str]) -> Iterator[list[Sample]]:
    """``poll_status`` in its own process for the block; the list holds its samples after."""
    spawn = multiprocessing.get_context("spawn")
    ready, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    process = spawn.Process(target=poll_status, args=(url, headers, ready, stop, results),
                            daemon=True)
    process.start()
    samples: list[Sample] = []
    try:
        assert ready.wait(60), "the other client never got an answer"
        yield samples
        stop.set()
        samples += results.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():  # the block failed and nobody took its samples
            process.terminate()


def latency_ms(samples: list[Sample], since: float, until: float) -> dict[str, float]:
    seconds = [sec for at, sec, _ in samples if since <= at < until]
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"n": len(seconds), "p50": round(cuts[49] * 1e3, 1),
            "p99": round(cuts[98] * 1e3, 1), "max": round(max(seconds) * 1e3, 1)}


# -- API memory ------------------------------------------------------------------------------
def vm_mb(pid: int, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of a process, from /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peaks(pids: list[int]) -> dict[int, float]:
    """VmHWM counts from now on (not start-up's or the upload's); each process's RSS now."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {pid: vm_mb(pid, "VmRSS") for pid in pids}


# -- the burst -------------------------------------------------------------------------------
@dataclass
class Download:
    index: int
    inline: bool
    status: int
    redirected_to: str | None  # where a 302 pointed
    served_by: str  # the URL that answered last
    body: bytes


def download(item: dict) -> Download:
    """An item's depth.png: odd items ``?inline=1``, even ones by the redirect."""
    inline = item["index"] % 2 == 1
    response = requests.get(item["artifacts"]["depth_png"],
                            params={"inline": "1"} if inline else None,
                            headers=_auth("burst"), timeout=DOWNLOAD_TIMEOUT)
    hops = [r.headers.get("Location") for r in response.history if r.status_code == 302]
    return Download(item["index"], inline, response.status_code, hops[0] if hops else None,
                    response.url, response.content)


def expected_depth_png(item: dict) -> bytes:
    """What depth.png must be: the one renderer applied to the depth_raw the API serves."""
    served = requests.get(item["artifacts"]["depth_raw"], params={"inline": "1"},
                          headers=_auth("burst"), timeout=60)
    assert served.status_code == 200, served.text[:200]
    raw = raw_depth(served.content, item["width"], item["height"])
    return bytes(render_full_size(raw, ["depth_png"])["depth_png"])


def assert_exact(deployment: Deployment, downloads: list[Download], items: list[dict]) -> None:
    """Every download the renderer's bytes for its own item, by the way it asked for."""
    with ThreadPoolExecutor(2) as pool:  # OpenCV and isal render without the GIL
        expected = dict(zip((item["index"] for item in items),
                            pool.map(expected_depth_png, items)))
    assert len({hashlib.sha256(png).digest() for png in expected.values()}) == ITEMS, \
        "the items' depth maps must differ for byte equality to tell them apart"
    storage = f"{deployment.s3.endpoint}/{deployment.bucket}/"
    for got in downloads:
        assert got.status == 200, (got.index, got.status, got.body[:200])
        assert got.body == expected[got.index], f"item {got.index}: wrong depth.png bytes"
        if got.inline:
            assert got.redirected_to is None and got.served_by.startswith(
                deployment.system.api_url), got
        else:
            assert got.redirected_to.startswith(storage), got.redirected_to
            assert "X-Amz-Signature=" in got.redirected_to, got.redirected_to
    for got in downloads[:2]:  # one of each way, decoded (the rest have the same bytes)
        pixels = cv2.imdecode(np.frombuffer(got.body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint16 and pixels.shape == BIG_SIZE[::-1], pixels.shape


def finished_items(deployment: Deployment, tmp_path: Path) -> tuple[list[dict], str]:
    """The burst tenant's ``ITEMS`` big photos, computed; the poller's small job's id."""
    system = deployment.system
    worker = system.start_worker(concurrency=2)
    system.start_api()  # `depthfleet api`'s defaults: 2 gevent processes, 1 render thread each
    photos = distinct_big_photos(tmp_path / "photos", ITEMS)
    wait_for_pool(worker, 2)
    poller, burst = deployment.client(KEYS["poller"]), deployment.client(KEYS["burst"])
    small_job = poller.submit_files(write_images(tmp_path / "small", 1))["id"]
    job_id = burst.submit_files(photos)["id"]
    assert wait_finished(burst, job_id)["succeeded"] == ITEMS
    assert wait_finished(poller, small_job)["succeeded"] == 1
    items = all_items(burst, job_id)
    assert all((item["width"], item["height"]) == BIG_SIZE for item in items)
    return items, small_job


def test_burst_of_full_size_downloads_keeps_api_responsive_and_bounded(deployment, tmp_path):
    items, small_job = finished_items(deployment, tmp_path)
    api = deployment.system.api
    api_pids = [api.pid, *live_pool_pids(api)]  # gunicorn and its workers
    assert len(api_pids) == 3, api_pids

    status_url = f"{deployment.system.api_url}/v1/jobs/{small_job}"
    with other_client(status_url, _auth("poller")) as polls:
        time.sleep(BASELINE_SECONDS)
        rss_before = reset_peaks(api_pids)
        started = time.time()
        with ThreadPoolExecutor(ITEMS) as pool:
            downloads = list(pool.map(download, items))
        ended = time.time()
        rss = {pid: (rss_before[pid], vm_mb(pid, "VmHWM"), vm_mb(pid, "VmRSS"))
               for pid in api_pids}

    rendered = [key for key in deployment.objects("cache/") if key.endswith("/depth.png")]
    during = latency_ms(polls, started, ended)
    print(f"\nrender burst: {ITEMS} depth.png downloads ({sum(d.inline for d in downloads)} "
          f"inline) in {ended - started:.1f}s, {len(rendered)} renders of "
          f"{statistics.mean(len(d.body) for d in downloads) / 1e6:.1f} MB\n"
          f"  other client's status polls (ms): before {latency_ms(polls, 0, started)}\n"
          f"                                     during {during}\n"
          + "\n".join(f"  API pid {pid}: RSS before {mb[0]:.0f} MB, peak {mb[1]:.0f} MB, "
                      f"after {mb[2]:.0f} MB" for pid, mb in rss.items()))
    assert_exact(deployment, downloads, items)
    assert len(rendered) == ITEMS, rendered
    assert [code for _, _, code in polls if code != 200] == []
    assert during["p99"] < POLL_P99_MS, during
    assert during["n"] >= 100, during  # the polls really ran through the burst
    for pid, (before, peak, _) in rss.items():
        assert peak - before < RSS_GROWTH_MB, (pid, rss[pid])
