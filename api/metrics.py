"""Every request's latency histogram and log line, and the text ``/metrics`` serves.

The request line replaces gunicorn's access log: it is JSON like every other line and
carries the route template and tenant, never headers (so never the Authorization header)
and never the query string. Probe and scrape requests log at DEBUG only.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, current_app, g, request

from depthfleet.api import services
from depthfleet.shared.jobs import JobStore
from depthfleet.shared.metrics import (HTTP_DURATION, ProcessMemoryCollector, QueueCollector,
                                       connect_publish_stamp, multiprocess_dir, queue_client,
                                       scrape)
from depthfleet.shared.queue import INGEST_QUEUE, QUEUE

log = logging.getLogger("depthfleet.api.requests")

QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}
_KEY = "depthfleet.metrics"


def init_app(app: Flask) -> None:
    """Register before any other ``before_request`` hook, so every request is timed."""
    connect_publish_stamp()
    app.before_request(_start_clock)
    app.after_request(_observe)


def _start_clock() -> None:
    g.request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    status = response.status_code
    HTTP_DURATION.labels(request.method, route, str(status)).observe(seconds)
    log.log(logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
            "%s %s %d", request.method, request.path, status,
            extra={"method": request.method, "route": route, "status": status,
                   "duration_ms": round(seconds * 1000, 2), "tenant": g.get("tenant")})
    return response


def _queue_store() -> JobStore:
    """This process's fail-fast Redis view for scrapes (not the retrying job store client)."""
    extensions = current_app.extensions
    if _KEY not in extensions:
        extensions[_KEY] = JobStore(queue_client(services.settings().redis_url or ""), 0)
    return extensions[_KEY]


def render() -> bytes:
    """The API's metrics: all gunicorn workers' series, queue depth and process memory."""
    # Under `depthfleet api` (multiprocess mode) this process is a gunicorn worker: the main
    # process of the instance is its parent, the master.
    main_pid = os.getppid() if multiprocess_dir() else os.getpid()
    return scrape(QueueCollector(_queue_store(), (QUEUE, INGEST_QUEUE)),
                  ProcessMemoryCollector("api", main_pid))
