"""gunicorn's settings (``depthfleet api`` passes ``-c python:<this module>`` and the bind
address and process count).

- Workers: gevent, one greenlet per connection, so a slow client costs a greenlet and a
  socket, never one of a handful of threads (docs/operations.md, "Slow clients"). gunicorn
  monkey-patches each worker process before it loads the app; redis-py, Celery's producer,
  boto3 and prometheus_client then run on gevent's sockets unchanged.
- Timeouts: a request's line and headers must arrive within ``keepalive`` seconds (the gevent
  worker reads them under that timeout, which also closes idle kept-alive connections), and
  its body at ``BODY_MIN_RATE`` bytes/s after ``BODY_GRACE_SECONDS`` (``BodyDeadline``: 408 and
  the connection closed). ``worker_connections`` bounds the connections of each process.
- Logs: gunicorn's own lines go through ``configure_logging`` as JSON; its access log stays
  off, ``api.metrics`` writes one JSON line per request instead.
- Metrics: each gunicorn worker writes its series into the instance's
  ``PROMETHEUS_MULTIPROC_DIR``; a worker that exits has its live gauges dropped at once and
  the directory goes when gunicorn exits.

The master never imports redis (nor boto3, Celery): gevent patches each worker after the
fork, and a module imported before that would keep unpatched names (importing redis imports
``redis.asyncio``, which holds ssl's; gevent warns about it in every worker).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gunicorn.glogging import Logger
from prometheus_client.multiprocess import mark_process_dead
from werkzeug.exceptions import RequestTimeout

from depthfleet.shared.logs import configure_logging
from depthfleet.shared.settings import Settings

worker_class = "gevent"
worker_connections = 1000  # per process: connections beyond it wait in the listen backlog
keepalive = 5  # seconds: idle kept-alive connections, and the deadline for a request's headers
timeout = 600
graceful_timeout = 30  # in-flight requests at SIGTERM; deploy/k8s's grace period covers it
accesslog = None

BODY_GRACE_SECONDS = 30  # a request body may take this long, plus 1 s per BODY_MIN_RATE bytes
BODY_MIN_RATE = 1024  # bytes/s on average: a 10 MB photo may take up to ~2.7 h
BODY_READ_PIECE = 1 << 16  # each timed read: a big read() is checked piece by piece


class JsonLogger(Logger):
    """gunicorn's logger, handing every line to the root logger's JSON handler."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure_logging(Settings.from_env(), "api")
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


logger_class = JsonLogger


class BodyTooSlow(RequestTimeout):
    description = (f"the request body arrived slower than {BODY_MIN_RATE} bytes/s "
                   f"(after {BODY_GRACE_SECONDS} s)")


class DeadlineInput:
    """``wsgi.input`` whose reads fail with 408 once the body falls behind its deadline.

    The deadline is ``BODY_GRACE_SECONDS`` after the headers arrived plus one second per
    ``BODY_MIN_RATE`` bytes received, so a client trickling a byte now and then (slowloris
    for bodies) is cut off while any real upload, however large, is not. Only ``read``,
    ``readline``, ``readlines`` and iteration, as PEP 3333 asks (no ``readinto``: werkzeug
    then reads through ``read``).
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._received = 0
        self.timed_out = False

    def _timed(self, read: Callable[..., bytes], *args: Any) -> bytes:
        import gevent

        remaining = (self._started + BODY_GRACE_SECONDS + self._received / BODY_MIN_RATE
                     - time.monotonic())
        try:
            if remaining <= 0:
                raise BodyTooSlow()
            with gevent.Timeout(remaining, BodyTooSlow()):
                data = read(*args)
        except BodyTooSlow:
            self.timed_out = True
            raise
        self._received += len(data)
        return data

    def read(self, size: int | None = None) -> bytes:
        wanted = -1 if size is None or size < 0 else size
        pieces: list[bytes] = []
        while wanted:
            piece = self._timed(self._stream.read, BODY_READ_PIECE if wanted < 0
                                else min(wanted, BODY_READ_PIECE))
            if not piece:
                break
            pieces.append(piece)
            wanted = wanted if wanted < 0 else wanted - len(piece)
        return b"".join(pieces)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(self._stream.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class BodyDeadline:
    """WSGI middleware: ``DeadlineInput`` for every request; a late body's connection closes."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"])

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if body.timed_out:  # the rest of the body is not worth waiting for
                getattr(getattr(start_response, "__self__", None), "force_close", _nothing)()
            return start_response(status, headers, exc_info)

        return self.app(environ, respond)


def _nothing() -> None:
    pass


def on_starting(server: Any) -> None:
    """Room for ``worker_connections`` sockets per process: raise the soft open-files limit
    (containers often start at 1024) towards the hard one; workers inherit it."""
    import resource

    wanted = worker_connections + 1024  # clients, plus Redis, S3, spooled uploads, logs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            server.log.warning("open files limited to %d: fewer than worker_connections=%d "
                               "clients per process can connect", raised, worker_connections)


def post_worker_init(worker: Any) -> None:
    """Before the worker accepts: its clients built, and ``BodyDeadline`` in front of the app."""
    _build_clients(worker.wsgi, worker.log)
    if type(worker).__module__ == "gunicorn.workers.ggevent":  # gevent.Timeout needs its hub
        worker.wsgi = BodyDeadline(worker.wsgi)


def _build_clients(app: Any, log: Any) -> None:
    """Create the job store, storage and Celery clients now (no connection is opened).

    Built lazily by the first request instead, they cost that process ~0.2-0.5 s of CPU
    (botocore loads its S3 model), during which a gevent worker answers no one else.
    """
    try:
        from depthfleet.api import services

        with app.app_context():
            services.store(), services.storage(), services.celery()
    except Exception as exc:  # a bad setting fails the requests that need it, as before
        log.warning("clients not built at start-up: %s: %s", type(exc).__name__, exc)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # shared.metrics.MULTIPROC_ENV; see above
        mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    from depthfleet.shared.metrics import remove_metrics_dir  # the master is done forking

    remove_metrics_dir()
