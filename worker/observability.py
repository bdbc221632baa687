"""What a worker tells operators: JSON logs, Prometheus metrics, liveness and readiness.

``install(settings)`` (called once by ``worker.app`` at import) connects Celery's signals:

- ``celeryd_init`` (first thing a starting worker does) and ``setup_logging``: JSON lines
  (``shared.logs``) in the parent and every pool process; Celery configures none of its own.
- ``worker_init`` (parent, before the model files are prepared): an HTTP server on
  ``DEPTHFLEET_METRICS_PORT`` (0: none) serving ``/metrics`` (every process of this worker,
  merged from its ``PROMETHEUS_MULTIPROC_DIR``), ``/healthz`` (the parent answers) and
  ``/readyz`` (every pool process holds a warm model).
- ``before_task_publish``: publication time in a header, for the queue wait of items.
- ``task_prerun``/``task_postrun`` (pool process): ``job_id`` and ``task_id`` on every line
  the task logs; after a task that succeeded, a job that it finished is counted once.
- ``worker_shutdown`` (parent): the server stops and the metrics directory goes.

Per item, ``worker.tasks`` uses ``item_scope`` and the ``shared.metrics`` helpers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import Token
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from celery.signals import (celeryd_init, setup_logging, task_postrun, task_prerun,
                            worker_init, worker_shutdown)
from prometheus_client import CONTENT_TYPE_LATEST

from depthfleet.shared.logs import bind_context, configure_logging, log_context, unbind_context
from depthfleet.shared.metrics import (IN_FLIGHT, JOBS, MODEL_LOAD, MODEL_LOADED,
                                       MODEL_LOADED_NAME, QUEUE_WAIT, ProcessMemoryCollector,
                                       child_pids, connect_publish_stamp, merged_values,
                                       multiprocess_dir, process_alive, publish_time,
                                       remove_metrics_dir, scrape)
from depthfleet.shared.queue import PROCESS_ITEMS
from depthfleet.shared.settings import Settings

log = logging.getLogger(__name__)

_server: ThreadingHTTPServer | None = None


@dataclass
class _RunningTask:
    log_token: Token[Mapping[str, Any]]  # undoes the task's log fields
    published: float | None  # when its message was sent, for the queue wait of its items


_running: list[_RunningTask] = []  # the task this pool process runs (prefork: one at a time)


def install(settings: Settings) -> None:
    """Connect the worker's logs, metrics and health to Celery's signals (once, at import)."""
    def logs(**_: Any) -> None:
        configure_logging(settings, "worker")

    def serve(**_: Any) -> None:
        start_server(settings.metrics_port)

    for signal, receiver in ((celeryd_init, logs), (setup_logging, logs), (worker_init, serve),
                             (task_prerun, _task_started), (task_postrun, _task_finished),
                             (worker_shutdown, _stop_server)):
        signal.connect(receiver, weak=False)
    connect_publish_stamp()


# -- per task and per item ---------------------------------------------------------------------
def _task_started(task_id: str | None = None, task: Any = None, args: Any = None,
                  **_: Any) -> None:
    """Every line of the task names its job (each task's first argument is the job id)."""
    token = bind_context(job_id=args[0] if args else None, task_id=task_id)
    _running.append(_RunningTask(token, publish_time(task.request) if task else None))


def _task_finished(task: Any = None, args: Any = None, state: str | None = None,
                   **_: Any) -> None:
    if task is not None and task.name == PROCESS_ITEMS and state == "SUCCESS" and args:
        _count_job_if_finished(args[0])
    if _running:
        unbind_context(_running.pop().log_token)


@contextmanager
def item_scope(job_id: str, index: int, tenant: str) -> Iterator[None]:
    """One item: its log fields, the in-flight gauge. The tenant stays for the task's later
    lines (retries, Celery's own), which are about the same job."""
    if _running:
        bind_context(tenant=tenant)  # undone with the task's own fields, in task_postrun
    IN_FLIGHT.inc()
    try:
        with log_context(job_id=job_id, item=index, tenant=tenant):
            yield
    finally:
        IN_FLIGHT.dec()


def item_started() -> None:
    """An item starts: how long it waited since its task was published (clocks in sync)."""
    if _running and _running[-1].published is not None:
        QUEUE_WAIT.observe(max(0.0, time.time() - _running[-1].published))


def _count_job_if_finished(job_id: str) -> None:
    """Count the job's outcome the first time a task sees it finished.

    A marker (a job-store lock that outlives the job record) makes the count exact when two
    tasks finish a job's last items at the same moment.
    """
    from depthfleet.worker.runtime import runtime

    store = runtime().store
    with suppress(redis.RedisError):
        status = store.status(job_id)
        if status is None or status.pending or status.ingesting:
            return
        if store.acquire_lock(f"job-finished:{job_id}", store.ttl + 86400) is not None:
            JOBS.labels(outcome=status.status).inc()


@contextmanager
def model_phase(phase: str) -> Iterator[None]:
    """Time ``prepare`` (parent: fetch, verify, export) or ``load`` (one pool process); a
    finished ``load`` marks this pool process ready."""
    started = time.perf_counter()
    yield
    MODEL_LOAD.labels(phase=phase).observe(time.perf_counter() - started)
    if phase == "load":
        MODEL_LOADED.set(1)


# -- the metrics and health server (worker parent) ---------------------------------------------
def pool_readiness() -> tuple[bool, dict[str, Any]]:
    """Ready when this worker has pool processes and every one of them has its model loaded.

    Pool processes are the parent's live children (while the model is being exported, the
    export subprocess is one, and not loaded: not ready); each marks itself in the
    multiprocess directory once loaded (``model_phase``).
    """
    pool = [pid for pid in child_pids(os.getpid()) if process_alive(pid)]
    path = multiprocess_dir()
    loaded = merged_values(path, MODEL_LOADED_NAME) if path else {}
    loading = [pid for pid in pool if loaded.get(pid) != 1]
    ready = bool(pool) and not loading
    return ready, {"status": "ready" if ready else "not_ready", "pool_processes": len(pool),
                   "loading": len(loading)}


def _metrics() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, scrape(ProcessMemoryCollector("worker", os.getpid()))


def _healthz() -> tuple[int, str, bytes]:
    return 200, "application/json", b'{"status": "ok"}'


def _readyz() -> tuple[int, str, bytes]:
    ready, body = pool_readiness()
    return (200 if ready else 503), "application/json", json.dumps(body).encode()


ROUTES: dict[str, Callable[[], tuple[int, str, bytes]]] = {
    "/metrics": _metrics, "/healthz": _healthz, "/readyz": _readyz}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = ROUTES.get(self.path.split("?", 1)[0])
        status, content_type, body = route() if route else (404, "text/plain", b"not found")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        log.debug("metrics server: " + format, *args)


def start_server(port: int) -> ThreadingHTTPServer | None:
    """Serve ``ROUTES`` on ``port`` (all interfaces) from a daemon thread; 0: no server.

    A port already taken (a second worker on one host) is a warning, not a failed worker.
    """
    global _server
    if port == 0 or _server is not None:
        return _server
    try:
        _server = ThreadingHTTPServer(("", port), _Handler)
    except OSError as exc:
        log.warning("metrics and health server not started on port %d: %s", port, exc)
        return None
    _server.daemon_threads = True
    threading.Thread(target=_server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics and health server on port %d", port)
    return _server


def _stop_server(**_: Any) -> None:
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    remove_metrics_dir()
