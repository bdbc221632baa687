"""Steady load on loopback: submits of small photos and status polls at fixed rates, for minutes.

Run: ``.venv/bin/python bench/load.py [--duration 180] [--submit-rate 50] [--poll-rate 200]``.
Without ``--server`` it starts a private deployment (Redis with AOF, the API, one worker, file
storage, a stand-in checkpoint); with ``--server URL`` it loads that one (``--api-pid`` to
watch its memory). Not part of CI: it runs for minutes.

The load is open-loop: request *i* of a stream is due at ``start + i / rate`` whatever the
answers before it took, so a slow API shows up as latency and lag, not as a lower rate
silently chosen by the client. A full queue answering 429 is backpressure doing its job and is
reported apart from errors. Printed: achieved rates, latency percentiles, answers by status,
client-side errors, and the API's RSS (gunicorn master and workers) over the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import requests

REFERENCE = Path(__file__).resolve().parents[2] / "shared"
PHOTO = REFERENCE / "testdata" / "photos" / "coffee.jpg"
RSS_EVERY_SECONDS = 10.0


@dataclass
class Stream:
    """One kind of request at a fixed rate, and what came back."""

    kind: str
    rate: float
    latencies_ms: list[float] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    lag_ms: list[float] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def record(self, answer: str, latency_ms: float, lag_ms: float) -> None:
        with self.guard:
            self.answers[answer] += 1
            self.latencies_ms.append(latency_ms)
            self.lag_ms.append(lag_ms)


def small_photos(count: int) -> Iterator[bytes]:
    """Distinct 64x48 JPEGs (a crop of a real photo with its index written into the pixels)."""
    base = cv2.imread(str(PHOTO))
    for index in range(count):
        y, x = (index * 7) % 300, (index * 13) % 500
        crop = base[y:y + 48, x:x + 64].copy()
        crop[0, :4] = np.frombuffer(index.to_bytes(12, "big"), np.uint8).reshape(4, 3)
        yield cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants (Linux /proc), in MB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{current}/status").read_text().splitlines()
            rss_kb = next(line for line in status if line.startswith("VmRSS")).split()[1]
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            total += int(rss_kb) / 1024
            todo += [int(c) for c in children]
    return total


def run_paced(stream: Stream, duration: float, threads: int,
              action: Callable[[requests.Session, int], str | None]) -> list[threading.Thread]:
    """Start ``threads`` threads that send request *i* at ``start + i / rate``."""
    total, start = int(stream.rate * duration), time.monotonic()
    counter, counter_guard = iter(range(total)), threading.Lock()

    def loop() -> None:
        session = requests.Session()
        while True:
            with counter_guard:
                index = next(counter, None)
            if index is None:
                return
            due = start + index / stream.rate
            time.sleep(max(0.0, due - time.monotonic()))
            sent = time.monotonic()
            try:
                answer = action(session, index)
            except requests.RequestException as exc:
                answer = type(exc).__name__
            if answer is None:
                continue  # nothing was sent
            stream.record(answer, (time.monotonic() - sent) * 1000, (sent - due) * 1000)

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


class Load:
    """The two streams against one API, sharing the ids of accepted jobs."""

    def __init__(self, api: str, photos: list[bytes], headers: dict[str, str]) -> None:
        self.api = api
        self.photos = photos
        self.headers = headers
        self.jobs: deque[str] = deque(maxlen=2000)  # recent: what the polls ask about
        self.accepted: list[str] = []

    def submit(self, session: requests.Session, index: int) -> str:
        photo = self.photos[index % len(self.photos)]
        response = session.post(f"{self.api}/v1/jobs", headers=self.headers, timeout=30,
                                files=[("file", (f"load-{index:06d}.jpg", photo))])
        if response.status_code == 202:
            self.jobs.append(response.json()["id"])
            self.accepted.append(response.json()["id"])
        return str(response.status_code)

    def poll(self, session: requests.Session, index: int) -> str | None:
        if not self.jobs:
            return None
        job_id = random.choice(self.jobs)
        return str(session.get(f"{self.api}/v1/jobs/{job_id}", headers=self.headers,
                               timeout=30).status_code)

    def finished(self) -> int:
        """How many accepted jobs are done (all their items finished) right now."""
        session = requests.Session()
        return sum(session.get(f"{self.api}/v1/jobs/{job_id}", headers=self.headers,
                               timeout=30).json()["pending"] == 0 for job_id in self.accepted)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def report(streams: list[Stream], duration: float, rss: list[tuple[float, float]]) -> None:
    print("\n| stream | target/s | achieved/s | p50 ms | p95 ms | p99 ms | max ms | "
          "p99 lag ms | answers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in streams:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(s.answers.items()))
        print(f"| {s.kind} | {s.rate:.0f} | {len(s.latencies_ms) / duration:.1f} | "
              f"{percentile(s.latencies_ms, 50):.1f} | {percentile(s.latencies_ms, 95):.1f} | "
              f"{percentile(s.latencies_ms, 99):.1f} | {max(s.latencies_ms, default=0):.1f} | "
              f"{percentile(s.lag_ms, 99):.1f} | {answers} |")
    if rss:
        series = ", ".join(f"{t:.0f}s: {mb:.0f}" for t, mb in rss)
        print(f"\nAPI RSS (MB), start {rss[0][1]:.0f}, end {rss[-1][1]:.0f}, "
              f"max {max(mb for _, mb in rss):.0f}: {series}")


def sample_rss(pid: int | None, duration: float, into: list[tuple[float, float]]) -> None:
    if pid is None:
        return
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) <= duration + 1:
        into.append((elapsed, tree_rss_mb(pid)))
        time.sleep(RSS_EVERY_SECONDS)


def run(api: str, api_pid: int | None, args: argparse.Namespace) -> None:
    photos = list(small_photos(int(args.submit_rate * args.duration) + 1))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    load = Load(api, photos, headers)
    streams = [Stream("submit (1 photo)", args.submit_rate), Stream("poll status", args.poll_rate)]
    rss: list[tuple[float, float]] = []
    threading.Thread(target=sample_rss, args=(api_pid, args.duration, rss), daemon=True).start()
    threads = run_paced(streams[0], args.duration, args.threads, load.submit) + \
        run_paced(streams[1], args.duration, args.threads, load.poll)
    for thread in threads:
        thread.join()
    report(streams, args.duration, rss)
    print(f"accepted jobs finished when the load stopped: {load.finished()} of "
          f"{len(load.accepted)} (the rest wait in the queue that backpressure caps)")


@contextlib.contextmanager
def private_deployment(root: Path, max_queued: int, workers: int) -> Iterator[tuple[str, int]]:
    """Redis (AOF), API and workers on this machine, like ``depthfleet run`` starts them."""
    from depthfleet.local import local_system
    from depthfleet.shared.settings import Settings

    checkpoint = root / "midas_v21_small_256.pt"
    subprocess.run([sys.executable, str(REFERENCE / "midas" / "detweights.py"),
                    str(REFERENCE / "midas" / "midas_v21_small_256.keys.json"), "1234",
                    str(checkpoint)], check=True, capture_output=True)
    os.environ["DEPTHFLEET_MAX_QUEUED_ITEMS"] = str(max_queued)  # inherited by the API
    settings = Settings.from_env().with_(weights=str(checkpoint), cache_dir=root / "cache")
    with local_system(settings, root, workers=workers, threads=1) as system:
        api = next(p for p in system.processes if "api" in p.args)
        yield system.api_url, api.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--submit-rate", type=float, default=50.0, help="jobs per second")
    parser.add_argument("--poll-rate", type=float, default=200.0, help="status polls per second")
    parser.add_argument("--threads", type=int, default=32, help="client threads per stream")
    parser.add_argument("--server", default=None, help="load this API instead of starting one")
    parser.add_argument("--api-pid", type=int, default=None, help="with --server: its pid")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-queued", type=int, default=2000,
                        help="private deployment: DEPTHFLEET_MAX_QUEUED_ITEMS (429 above it)")
    parser.add_argument("--workers", type=int, default=1, help="private deployment: pool size")
    args = parser.parse_args()
    if args.server:
        run(args.server.rstrip("/"), args.api_pid, args)
        return
    with tempfile.TemporaryDirectory() as tmp, \
            private_deployment(Path(tmp), args.max_queued, args.workers) as (api, pid):
        run(api, pid, args)


if __name__ == "__main__":
    main()
