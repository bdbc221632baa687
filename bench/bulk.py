"""A 100,000-item job through the API: submission time, status latency under load, memory, cancel.

Run: ``.venv/bin/python bench/bulk.py [--items 100000] [--seconds 60]`` (needs the machine's
Redis on 127.0.0.1:6379; starts its own API and worker processes; makes a stand-in checkpoint).

The items are tiny photos uploaded once and referenced many times (``{"uploads": [...]}``),
so the job store, the queue and the API are what is measured, not the network.
"""

from __future__ import annotations

import argparse
import os
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import redis
import requests

from depthfleet.local import _spawn, _stop, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared"
PHOTO = REFERENCE / "testdata" / "photos" / "coffee.jpg"


def tree_rss_mb(pid: int) -> dict[int, float]:
    """RSS of a process and all its descendants, by pid (Linux /proc)."""
    result: dict[int, float] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        result[current] = rss / 1024
        todo += [int(c) for c in children]
    return result


def tiny_photos(count: int) -> list[bytes]:
    base = cv2.imread(str(PHOTO))
    photos = []
    for seed in range(count):
        y, x = (seed * 7) % 300, (seed * 13) % 500
        photos.append(cv2.imencode(".jpg", base[y:y + 48, x:x + 64])[1].tobytes())
    return photos


def start_system(root: Path, redis_url: str) -> tuple[str, list[subprocess.Popen]]:
    checkpoint = root / "ckpt.pt"
    subprocess.run([sys.executable, str(REFERENCE / "midas" / "detweights.py"),
                    str(REFERENCE / "midas" / "midas_v21_small_256.keys.json"), "1234",
                    str(checkpoint)], check=True, capture_output=True)
    env = {**os.environ, "DEPTHFLEET_REDIS_URL": redis_url,
           "DEPTHFLEET_STORAGE_URL": (root / "storage").as_uri(),
           "DEPTHFLEET_WEIGHTS": str(checkpoint), "DEPTHFLEET_CACHE_DIR": str(root / "cache"),
           "DEPTHFLEET_MAX_QUEUED_ITEMS": "1000000", "DEPTHFLEET_MAX_UPLOAD_MB": "256"}
    port = free_port()
    api = _spawn([sys.executable, "-m", "depthfleet.cli", "api", "--port", str(port)], env,
                 root / "api.log")
    worker = _spawn([sys.executable, "-m", "depthfleet.cli", "worker", "--concurrency", "2"],
                    env, root / "worker.log")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "API", 60, api)
    return url, [api, worker]


def latency_ms(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    response = session.get(url, timeout=10)
    response.raise_for_status()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60, help="how long to poll while workers run")
    args = parser.parse_args()

    db = random.randint(1, 15)
    redis_url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        api_url, procs = start_system(root, redis_url)
        api, worker = procs
        session = requests.Session()
        try:
            photos = tiny_photos(args.distinct)
            digests = [hashlib.sha256(p).hexdigest() for p in photos]
            for photo, digest in zip(photos, digests):
                session.put(f"{api_url}/v1/uploads/{digest}", data=photo, timeout=30).raise_for_status()
            body = {"uploads": [{"name": f"scan/{i:06d}.jpg", "sha256": digests[i % args.distinct]}
                                for i in range(args.items)]}
            rss_start = {"api": sum(tree_rss_mb(api.pid).values()),
                         "worker": sum(tree_rss_mb(worker.pid).values())}
            started = time.perf_counter()
            job = session.post(f"{api_url}/v1/jobs", json=body, timeout=600).json()
            submit_s = time.perf_counter() - started
            job_url = f"{api_url}/v1/jobs/{job['id']}"

            samples, rss_series = [], []
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                samples.append(latency_ms(session, job_url))
                if len(samples) % 20 == 0:
                    rss_series.append({"api": sum(tree_rss_mb(api.pid).values()),
                                       "worker": sum(tree_rss_mb(worker.pid).values())})
                time.sleep(0.05)
            before_cancel = session.get(job_url, timeout=10).json()
            started = time.perf_counter()
            session.delete(job_url, timeout=600).raise_for_status()
            cancel_s = time.perf_counter() - started
            while (final := session.get(job_url, timeout=10).json())["pending"]:
                time.sleep(0.5)
            report = {
                "items": args.items, "submit_seconds": round(submit_s, 2),
                "status_latency_ms": {"median": round(statistics.median(samples), 2),
                                      "p95": round(sorted(samples)[int(len(samples) * .95)], 2),
                                      "max": round(max(samples), 2), "samples": len(samples)},
                "processed_before_cancel": before_cancel["succeeded"] + before_cancel["failed"],
                "items_per_second": round((before_cancel["succeeded"] + before_cancel["failed"])
                                          / args.seconds, 1),
                "cancel_seconds": round(cancel_s, 2),
                "final": {k: final[k] for k in ("status", "total", "succeeded", "failed",
                                                "cancelled", "pending")},
                "counts_add_up": final["succeeded"] + final["failed"] + final["cancelled"]
                                 == final["total"] == args.items,
                "rss_mb": {"start": rss_start, "during": rss_series[::max(1, len(rss_series) // 6)],
                           "end": {"api": sum(tree_rss_mb(api.pid).values()),
                                   "worker": sum(tree_rss_mb(worker.pid).values())}},
            }
            print(json.dumps(report, indent=2))
        finally:
            for proc in procs:
                _stop(proc)
            redis.Redis.from_url(redis_url).flushdb()


if __name__ == "__main__":
    main()
