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
from depthfleet.shared.storage import StorageError
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


@app.task(name=PROCESS_ITEMS, bind=True)
def process_items(self: Task, job_id: str, indexes: list[int]) -> dict[str, int]:
    return tasks.process_items(self, job_id, indexes)


@app.task(name=INGEST, queue=INGEST_QUEUE, autoretry_for=(StorageError,), retry_backoff=True,
          retry_backoff_max=60, max_retries=20)
def ingest_sources(job_id: str, deferred: list[dict[str, str]]) -> dict[str, int]:
    return {"added": ingest.ingest_sources(runtime(), app, job_id, deferred)}


@worker_init.connect
def _prepare(sender: object = None, **_: object) -> None:
    """Parent process, before the fork: fetch and verify weights, export the fast model once."""
    with observability.model_phase("prepare"):
        prepare_model_files(settings)


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
