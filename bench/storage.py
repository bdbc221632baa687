"""What an item leaves in storage, and what a full-size artifact costs when it is drawn on read.

Workers store the compact set by default (``depth_raw``, a heatmap preview, a thumbnail) and
the API renders ``depth.png``, ``depth.pfm`` and ``heatmap.png`` from ``depth_raw`` on first
read. This module counts the bytes under ``results/`` of a ``depthfleet run``'s storage
folder (and reads the run's pace from its results' times), and times that render: in this
process (decode of ``depth_raw``, then ``render_full_size`` for each full-size artifact) and
through a local API over HTTP (the first read renders and caches, the second serves the
cache).

Run alone: ``.venv/bin/python -m bench.storage PHOTO`` (the read costs of one photo).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from depthfleet.client import Client
from depthfleet.local import local_system
from depthfleet.shared.artifacts import FULL_SIZE, raw_depth, render_full_size
from depthfleet.shared.imaging.encode import decode_float_tiff
from depthfleet.shared.settings import Settings

# ``depthfleet run`` keeps its storage in OUT/.depthfleet/storage (depthfleet.local), and
# results under t/<tenant>/results/ (depthfleet.shared.layout.result_prefix).
RUN_STORAGE = Path(".depthfleet") / "storage"
RESULTS_GLOB = "t/*/results"
RENDER_RUNS = 5


def tree_bytes(root: Path) -> int:
    """The sizes of every file under ``root``, summed."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@dataclass
class StoredRun:
    """What a ``depthfleet run`` left in its storage folder."""

    files: dict[str, int]  # bytes of every result object, summed by filename
    finished: list[float]  # each result's meta.json mtime (a worker writes it last), sorted

    def steady_images_per_s(self, skip: int) -> float | None:
        """Results finished per second after the first ``skip``: the workers' pace with
        start-up and the run's end left out, read from the storage itself."""
        if len(self.finished) <= skip or skip < 1:
            return None
        span = self.finished[-1] - self.finished[skip - 1]
        return (len(self.finished) - skip) / span if span > 0 else None


def stored_run(out: Path) -> StoredRun:
    """The results of a ``depthfleet run`` into ``out`` (empty for commands with no storage)."""
    totals: Counter[str] = Counter()
    finished = []
    for folder in (out / RUN_STORAGE).glob(RESULTS_GLOB):
        for path in folder.rglob("*"):
            if path.is_file():
                stat = path.stat()
                totals[path.name] += stat.st_size
                if path.name == "meta.json":
                    finished.append(stat.st_mtime)
    return StoredRun(dict(totals), sorted(finished))


def best_ms(work: Callable[[], object], runs: int) -> float:
    """The fastest of ``runs`` calls: other work on the machine only ever adds time."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    return min(timings)


def render_costs(data: bytes, width: int, height: int, runs: int = RENDER_RUNS) -> dict[str, Any]:
    """In-process cost on one core of drawing each full-size artifact from ``depth_raw``
    bytes, as one read of it costs the API: decode, upsampling (redone per artifact), encoding.

    Measured in this process, whose allocator is glibc's default like the API's (workers
    keep photo buffers on the heap, ``shared.memory``)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        raw = raw_depth(data, width, height)
        rendered = render_full_size(raw, FULL_SIZE)
        return {
            "width": width, "height": height, "net_size": list(raw.net.shape[::-1]),
            "raw_bytes": len(data), "runs": runs,
            "decode_ms": best_ms(lambda: decode_float_tiff(data), runs),
            "upsample_ms": best_ms(raw.at, runs),
            "render_ms": {name: best_ms(lambda n=name: render_full_size(raw, [n]), runs)
                          for name in FULL_SIZE},
            "artifact_bytes": {name: len(blob) for name, blob in rendered.items()},
        }
    finally:
        cv2.setNumThreads(threads)


def _timed_get(client: Client, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    body = client.download(url)
    return (time.perf_counter() - started) * 1000, body


def read_costs(settings: Settings, photo: Path, runs: int = RENDER_RUNS) -> dict[str, Any]:
    """``photo`` through a local system (compact default); every full-size artifact read
    twice over HTTP (``?inline=1``: bytes, not a redirect), then ``render_costs`` of its
    stored depth_raw."""
    source = photo.resolve()
    local = settings.with_(tenant_sources={"local": (source.parent.as_uri() + "/",)})
    http: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="depthfleet-read-") as data_dir, \
            local_system(local, Path(data_dir), workers=1, threads=1) as system, \
            Client(system.api_url) as client:
        job = client.submit_json({"keys": [source.as_uri()]})
        client.wait(job["id"], interval=0.05, on_update=lambda _: system.check_alive())
        item = next(client.iter_items(job["id"]))
        if item["status"] != "succeeded":
            raise RuntimeError(f"the read-cost photo failed: {item['error']}")
        _, data = _timed_get(client, item["artifacts"]["depth_raw"] + "?inline=1")
        for name in FULL_SIZE:
            url = item["artifacts"][name] + "?inline=1"
            first_ms, body = _timed_get(client, url)
            cached_ms, _ = _timed_get(client, url)
            http[name] = {"first_ms": first_ms, "cached_ms": cached_ms, "bytes": len(body)}
    costs = render_costs(data, item["width"], item["height"], runs)
    return {**costs, "http": http}


def main(argv: list[str] | None = None) -> int:
    from bench.run import checkpoint  # the bench's weights, made once

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "depthfleet-bench")
    args = parser.parse_args(argv)
    settings = Settings(weights=str(checkpoint(args.cache)), cache_dir=args.cache / "models")
    print(json.dumps(read_costs(settings, args.photo), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
