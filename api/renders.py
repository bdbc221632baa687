"""Full-size artifacts rendered on read from ``depth_raw``, once, into a storage cache.

A compact result stores what the network computed; ``depth.png``, ``depth.pfm`` and
``heatmap.png`` are drawn from it here, by ``render_full_size`` like everywhere else, so the
bytes are those a worker storing full size writes. Each (result, size, artifact) is rendered
once: under ``cache/`` in storage (``layout.render_key``; the reaper expires it), then served
from there like any stored artifact, by a presigned redirect or streamed in 1 MB pieces.

The rendering itself (upsampling and encoding, ~110 ms for a 12 MP depth.png) runs in a
small pool of native threads per API process (``DEPTHFLEET_RENDER_THREADS``, at nice 10), so
the event loop keeps answering status polls while the cores render, and memory is bounded by
the pool: about 100 MB per 12 MP render in flight. A burst of requests for the same render
waits for the one that holds its Redis lock instead of rendering it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from depthfleet.shared import layout
from depthfleet.shared.artifacts import ARTIFACTS, raw_depth, render_full_size
from depthfleet.shared.depth import RawDepth, output_size
from depthfleet.shared.jobs import JobStore
from depthfleet.shared.storage import Storage

T = TypeVar("T")
RENDER_NICE = 10
WAIT_POLL_SECONDS = 0.05


class RenderPool:
    """Native threads for CPU-bound rendering, whether or not gevent patched this process.

    Under gevent, ``threading`` is patched into greenlets, which would render on the event
    loop's own thread; gevent's ``ThreadPool`` runs real threads and lets the calling
    greenlet wait cooperatively.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool: Any = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = _native_pool(self.threads)
        if isinstance(self._pool, ThreadPoolExecutor):
            return self._pool.submit(self._niced, fn, *args).result()
        return self._pool.apply(self._niced, (fn, *args))

    @staticmethod
    def _niced(fn: Callable[..., T], *args: Any) -> T:
        """Run at lower priority than request handling (per thread on Linux), once per thread."""
        if os.getpriority(os.PRIO_PROCESS, 0) < RENDER_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, RENDER_NICE)
        return fn(*args)


def _native_pool(threads: int) -> Any:
    try:
        from gevent import monkey
    except ImportError:
        return ThreadPoolExecutor(threads, thread_name_prefix="render")
    if not monkey.is_module_patched("threading"):
        return ThreadPoolExecutor(threads, thread_name_prefix="render")
    from gevent.threadpool import ThreadPool

    return ThreadPool(threads)


def rendered_key(storage: Storage, store: JobStore, pool: RenderPool, raw_key: str,
                 width: int, height: int, name: str, max_side: int | None,
                 lock_seconds: float) -> str:
    """The storage key of ``name`` rendered from the depth_raw at ``raw_key`` for a photo of
    ``width`` x ``height`` (capped to ``max_side``), rendering and storing it if needed.

    Raises ``ObjectMissing`` if depth_raw is gone, ``StorageError`` if storage is down.
    """
    size = output_size(height, width, max_side)
    key = layout.render_key(raw_key, size, ARTIFACTS[name].filename)
    deadline = time.monotonic() + lock_seconds
    while not storage.exists(key):
        lock = store.acquire_lock(f"render-on-read:{key}", lock_seconds)
        if lock is None and time.monotonic() < deadline:
            _wait_while_held(store, f"render-on-read:{key}", deadline)
            continue  # the holder finished (look again) or died (take over)
        try:
            if not storage.exists(key):  # stored while we asked for the lock?
                raw = raw_depth(storage.get(raw_key), width, height)
                blob = pool.run(_render_one, raw, name, max_side)
                storage.put(key, blob, ARTIFACTS[name].content_type)
        finally:
            if lock is not None:
                lock.release()
        break
    return key


def _render_one(raw: RawDepth, name: str, max_side: int | None) -> bytes | bytearray:
    return render_full_size(raw, [name], max_side)[name]


def _wait_while_held(store: JobStore, lock_name: str, deadline: float) -> None:
    while store.lock_held(lock_name) and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_SECONDS)  # gevent-patched: yields to other requests
