"""The Celery worker: ``depthfleet worker`` or plain ``celery -A depthfleet.worker.app worker``.

The parent process prepares the model files (weights download and verification, ONNX export
in a subprocess) before forking, so every pool process only has to open them; each pool
process then loads one warm model with pinned threads in ``worker_process_init``. Once the
worker consumes, its parent also runs the reaper thread (``worker.reaper``).
"""

from __future__ import annotations

import logging
import os

from celery import Task
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from depthfleet.shared.pipeline import prepare_model_files
from depthfleet.shared.queue import INGEST, INGEST_QUEUE, PROCESS_ITEMS, make_celery
from depthfleet.shared.settings import Settings
from depthfleet.worker import ingest, observability, tasks
from depthfleet.worker.reaper import Reaper
from depthfleet.worker.runtime import default_threads, init_runtime, runtime

log = logging.getLogger(__name__)

settings = Settings.from_env()
observability.install(settings)  # first: its worker_init handler serves health during _prepare
app = make_celery(settings)
# Model loading in a pool process can take longer than Celery's 4 s default start-up allowance.
app.conf.worker_proc_alive_timeout = 60.0
reaper = Reaper(app, settings)
INGEST_STORAGE_RETRIES = 20
EXIT_NO_MODEL = 3  # the worker's exit status when its model cannot be prepared


@app.task(name=PROCESS_ITEMS, bind=True)
def process_items(self: Task, job_id: str, indexes: list[int],
                  token: str | None = None) -> dict[str, int]:
    return tasks.process_items(self, job_id, indexes, token)


@app.task(name=INGEST, bind=True, queue=INGEST_QUEUE, max_retries=None)
def ingest_sources(self: Task, job_id: str, deferred: list[dict[str, str]]) -> dict[str, int]:
    """Expand a job's prefixes and archives; paused and storage-faulted runs continue later
    from their cursor, and a storage fault that outlasts every retry ends the ingestion."""
    rt = runtime()
    try:
        return {"added": ingest.ingest_sources(rt, app, job_id, deferred)}
    except ingest.Paused as pause:
        log.info("job %s: ingestion paused (%s)", job_id, pause)
        raise self.retry(countdown=pause.seconds) from None
    except tasks.TRANSIENT as exc:
        if self.request.retries >= INGEST_STORAGE_RETRIES:
            status = rt.store.status(job_id)
            if status is not None:
                ingest.fail_ingestion(rt, app, status, f"storage unreachable: {exc}")
            return {"added": 0}
        raise self.retry(countdown=min(60, 2 ** self.request.retries)) from None


@worker_init.connect
def _prepare(sender: object = None, **_: object) -> None:
    """Parent process, before the fork: fetch and verify weights, export the fast model once.

    A worker that cannot prepare its configured backend refuses to start (Celery would log
    the error and consume anyway, every task then failing): nothing falls back to another.
    """
    try:
        with observability.model_phase("prepare"):
            prepare_model_files(settings)
    except Exception as exc:
        log.critical("worker refuses to start: the model for DEPTHFLEET_BACKEND=%s "
                     "(DEPTHFLEET_PRECISION=%s) cannot be prepared: %s",
                     settings.backend, settings.precision, exc)
        raise SystemExit(EXIT_NO_MODEL) from exc  # Celery's signals swallow only Exceptions


@worker_process_init.connect
def _load_model(sender: object = None, **_: object) -> None:
    """Pool process: one warm model with pinned threads, loaded once."""
    with observability.model_phase("load"):  # a finished load makes this process ready
        threads = default_threads(settings, settings.concurrency or (os.cpu_count() or 1))
        init_runtime(settings, threads)


@worker_ready.connect
def _start_reaper(sender: object = None, **_: object) -> None:
    """Parent process, consuming: requeue items of vanished workers and lost tasks."""
    reaper.start()


@worker_shutdown.connect
def _stop_reaper(sender: object = None, **_: object) -> None:
    reaper.stop()
