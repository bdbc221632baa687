"""Archive and image bombs cost the API nothing and the workers only their bounds.

alice uploads each kind of bomb (a bzip2 and an LZMA member whose directory understates its
size, 300 directory records overlapping one 24 MB kernel, a tar.gz of two 1 GB members, a
40,000-page TIFF alone and inside a zip) while bob polls his own job. Measured on the real
processes: the API's memory grows < 100 MB and no bomb request costs it 2 s of CPU, bob's
polls stay fast (p99 < 200 ms), the pool processes stay under the worker memory setting,
and every bomb ends as failed entries with a reason beside its good members, which succeed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from faults.faultkit import all_items, live_pool_pids, wait_finished
from hostile import (big_members_tar_gz, bzip2_bomb_zip, lzma_bomb_zip, overlapping_zip,
                     tiff_pages)
from support import build_archive, tiny_jpeg

pytestmark = pytest.mark.faults

POOL = 2
KEYS = {"alice": "key-alice", "bob": "key-bob"}
API_GROWTH_MB = 100
API_CPU_SECONDS = 2.0
POLL_P99_SECONDS = 0.2
WORKER_MEMORY_MB = 320  # the default DEPTHFLEET_WORKER_MEMORY_MB
BOMB_CODES = {"file_too_large", "corrupt_archive", "archive_limit", "not_an_image",
              "unsupported_entry",  # build_archive adds a link entry
              "corrupt_image"}
TICK = os.sysconf("SC_CLK_TCK")


def _bombs() -> list[tuple[str, bytes]]:
    pages = tiff_pages(40_000)
    return [("bzip2-bomb.zip", bzip2_bomb_zip()), ("lzma-bomb.zip", lzma_bomb_zip()),
            ("overlapping.zip", overlapping_zip()), ("big-members.tar.gz", big_members_tar_gz()),
            ("pages.tif", pages),
            ("pages-in.zip", build_archive({"pages.tif": pages, "ok.jpg": tiny_jpeg(5)}, "zip"))]


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


@dataclass
class Watch:
    """Samples memory of the API and the pool, and times bob's polls, until stopped."""

    api_pgid: int
    worker: object
    poll_url: str
    api_peak: float = 0.0
    pool_peak: float = 0.0
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def api_rss(self) -> float:
        return sum(_rss_mb(pid) for pid in _group(self.api_pgid))

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            self.api_peak = max(self.api_peak, self.api_rss())
            self.pool_peak = max([self.pool_peak, *map(_rss_mb, live_pool_pids(self.worker))])

    def _poll(self) -> None:
        headers = {"Authorization": f"Bearer {KEYS['bob']}"}
        with requests.Session() as session:
            while not self.stop.wait(0.05):
                started = time.perf_counter()
                assert session.get(self.poll_url, headers=headers, timeout=10).ok
                self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> Watch:
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self._sample, self._poll)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(0.99 * (len(ordered) - 1))]


def _submit(api: str, tenant: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{api}/v1/jobs", files=[("file", (name, data))], timeout=120,
                         headers={"Authorization": f"Bearer {KEYS[tenant]}"})


def _finished(api: str, job_id: str) -> list[dict]:
    from depthfleet.client import Client

    client = Client(api, api_key=KEYS["alice"], timeout=60)
    wait_finished(client, job_id)
    return all_items(client, job_id)


def test_bombs_cost_the_api_nothing_and_the_workers_their_bounds(deploy):
    deployment = deploy(DEPTHFLEET_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()))
    worker = deployment.start(POOL)
    api = deployment.system.api_url
    bob = _submit(api, "bob", "bob.jpg", tiny_jpeg(1))
    assert bob.status_code == 202, bob.text
    bombs = _bombs()
    watch = Watch(deployment.system.api.pid, worker, f"{api}/v1/jobs/{bob.json()['id']}")
    api_before = watch.api_rss()
    report = []
    with watch:
        for name, data in bombs:
            pids = _group(deployment.system.api.pid)
            cpu_before = _cpu_seconds(pids)
            response = _submit(api, "alice", name, data)
            cpu = _cpu_seconds(pids) - cpu_before
            report.append(f"{name}: {len(data):,} bytes, API CPU {cpu:.2f} s, "
                          f"answer {response.status_code}")
            assert cpu < API_CPU_SECONDS, report[-1]
            if response.status_code != 202:  # refused from the header: fine, with its code
                assert 400 <= response.status_code < 500, response.text
                assert response.json()["error"]["code"] in BOMB_CODES | {"too_many_pixels"}
                continue
            items = _finished(api, response.json()["id"])
            failed = [i for i in items if i["status"] == "failed"]
            good = [i for i in items if i["status"] == "succeeded"]
            report.append(f"  {len(good)} succeeded, failed: "
                          f"{sorted({i['error']['code'] for i in failed})} "
                          f"(pool peak so far {watch.pool_peak:.0f} MB)")
            assert all(i["error"]["code"] in BOMB_CODES and i["error"]["message"]
                       for i in failed), (name, failed)
            # Only the photos beside a bomb succeed; a many-page TIFF is a photo (its first
            # page), read at the cost of one page.
            assert all(i["name"].endswith((".jpg", ".tif")) and "bomb" not in i["name"] and
                       not i["name"].startswith("big") for i in good), (name, good)
            if name != "overlapping.zip":  # the others carry good photos beside the bomb
                assert good, (name, items)
    print("\n".join(report))
    print(f"API RSS {api_before:.0f} -> peak {watch.api_peak:.0f} MB; pool peak "
          f"{watch.pool_peak:.0f} MB; bob's polls: {len(watch.latencies)}, "
          f"p99 {watch.p99() * 1000:.0f} ms, max {max(watch.latencies) * 1000:.0f} ms")
    assert watch.api_peak - api_before < API_GROWTH_MB
    assert watch.p99() < POLL_P99_SECONDS
    assert watch.pool_peak < WORKER_MEMORY_MB
    assert worker.poll() is None and deployment.system.api.poll() is None
    assert deployment.store.pending_items() == 0


def _huge_flat_png(side: int = 7999) -> bytes:
    """~60 KB of PNG that decodes to 64 MP (192 MB of pixels)."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((side, side, 3), 90, np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return png.tobytes()


def test_eight_huge_pngs_at_once_are_never_decoded_by_the_api(deploy):
    deployment = deploy(DEPTHFLEET_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()))
    deployment.system.start_api()  # no worker: only the API's share is measured here
    api, png = deployment.system.api_url, _huge_flat_png()
    pgid = deployment.system.api.pid
    before = sum(_rss_mb(pid) for pid in _group(pgid))
    peak, answers = before, []

    def post() -> None:
        answers.append(_submit(api, "alice", "huge.png", png).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, sum(_rss_mb(pid) for pid in _group(pgid)))
        time.sleep(0.02)
    print(f"8 x {len(png):,}-byte 7999x7999 PNGs: API RSS {before:.0f} -> peak {peak:.0f} MB")
    assert answers == [202] * 8
    assert peak - before < API_GROWTH_MB
