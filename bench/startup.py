"""Time from starting a worker to its first finished item, with the model cache warm.

Redis and the API run first and a one-photo job already waits in the queue; the clock starts
when ``depthfleet worker`` is spawned and stops when the job store says the item succeeded.
That covers Celery's start, the pool fork, each pool process loading its model (weights
checked against their sha256, the cached ONNX model opened) and the item itself.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from depthfleet.client import Client
from depthfleet.local import local_system
from depthfleet.shared.settings import Settings

POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 120


def first_result_seconds(settings: Settings, photo: Path, workers: int, threads: int) -> float:
    """Seconds from spawning the worker to ``photo``'s item being done."""
    source = photo.resolve()
    local = settings.with_(tenant_sources={"local": (source.parent.as_uri() + "/",)})
    with tempfile.TemporaryDirectory(prefix="depthfleet-startup-") as data_dir, \
            local_system(local, Path(data_dir), workers=0, threads=threads) as system:
        client = Client(system.api_url)
        job = client.submit_json({"keys": [source.as_uri()]})
        started = time.perf_counter()
        system.start_workers(workers, threads)
        while client.status(job["id"])["pending"]:
            if time.perf_counter() - started > TIMEOUT_SECONDS:
                raise TimeoutError("no result from the worker")
            system.check_alive()
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started
