"""Per-process worker state: one warm model, one job store, one storage client.

Built once per pool process (``worker_process_init``), never in the parent before the fork,
so no process inherits half-initialised thread pools or sockets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass

from depthfleet.shared.fairshare import FairShare
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.memory import HeapTrimmer, reuse_photo_buffers
from depthfleet.shared.pipeline import DepthEstimator, load_backend
from depthfleet.shared.queue import fair_share
from depthfleet.shared.settings import Settings
from depthfleet.shared.sources import SourceReader
from depthfleet.shared.storage import Storage, open_storage

log = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    storage: Storage
    sources: SourceReader
    estimator: DepthEstimator
    weights_sha256: str  # keys stored results: see ``result_identity``
    threads: int
    heap: HeapTrimmer  # keeps the process near DEPTHFLEET_WORKER_MEMORY_MB between photos
    share: FairShare  # releases a tenant's next task when one of its tasks finishes
    name: str = ""  # host:pid, recorded in the items this process starts


_runtime: Runtime | None = None


def default_threads(settings: Settings, processes: int) -> int:
    """``DEPTHFLEET_THREADS``, else the cores shared evenly among the pool processes."""
    if settings.threads:
        return settings.threads
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


def result_identity(estimator: DepthEstimator, weights_sha256: str) -> str:
    """What stored results are keyed by, so results of different arithmetic never mix.

    The weights' sha256 on the exact path; with an opt-in approximation (bf16, draft
    decoding) a hash of it and the approximation, so neither side reuses the other's results.
    """
    if estimator.exact:
        return weights_sha256
    approximation = f"{weights_sha256}:{estimator.backend.name}:draft={estimator.draft_decode}"
    return hashlib.sha256(approximation.encode()).hexdigest()


def pin_threads(threads: int) -> None:
    """Cap every native thread pool at ``threads`` (OpenMP, BLAS, OpenCV) in this process."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    import cv2

    cv2.setNumThreads(threads)


def init_runtime(settings: Settings, threads: int) -> Runtime:
    """Load the model and open connections for this process (idempotent)."""
    global _runtime
    if _runtime is None:
        started = time.perf_counter()
        reuse_photo_buffers()
        pin_threads(threads)
        backend = load_backend(settings, threads)
        estimator = DepthEstimator(backend, settings.fast_decode)
        store = JobStore(connect(settings.redis_url or ""), settings.job_ttl_days * 86400)
        _runtime = Runtime(
            settings=settings,
            store=store,
            storage=open_storage(settings),
            sources=SourceReader(settings),
            estimator=estimator,
            weights_sha256=result_identity(estimator, backend.weights_sha256),
            threads=threads,
            heap=HeapTrimmer(settings.worker_memory_mb << 20),
            share=fair_share(store, settings),
            name=f"{socket.gethostname()}:{os.getpid()}",
        )
        log.info("model ready in %.2fs (%s, %d threads)", time.perf_counter() - started,
                 backend.name, threads)
    return _runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime not initialised: worker_process_init did not run")
    return _runtime
