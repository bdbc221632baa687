"""gunicorn's settings (``depthfleet api`` passes ``-c python:<this module>`` and the bind
address and process count).

- Logs: gunicorn's own lines go through ``configure_logging`` as JSON; its access log stays
  off, ``api.metrics`` writes one JSON line per request instead.
- Metrics: each gunicorn worker writes its series into the instance's
  ``PROMETHEUS_MULTIPROC_DIR``; a worker that exits has its live gauges dropped at once and
  the directory goes when gunicorn exits.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger
from prometheus_client.multiprocess import mark_process_dead

from depthfleet.shared.logs import configure_logging
from depthfleet.shared.metrics import multiprocess_dir, remove_metrics_dir
from depthfleet.shared.settings import Settings

worker_class = "gthread"
threads = 8  # threads absorb slow uploads; no per-request state is kept in memory
timeout = 600
graceful_timeout = 30  # in-flight requests at SIGTERM; deploy/k8s's grace period covers it
accesslog = None


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


def child_exit(server: Any, worker: Any) -> None:
    if multiprocess_dir():
        mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    remove_metrics_dir()
