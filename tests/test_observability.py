"""Fleet operations end to end: metrics, JSON logs, health and a warm shutdown, on real processes.

The API is the gunicorn process ``depthfleet api`` starts (2 processes, multiprocess metrics),
workers are ``depthfleet worker`` processes (2 pool processes, their metrics server on a free
port), with the machine's Redis and an S3 server. Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from depthfleet.local import _stop, free_port, wait_until
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.logs import JsonFormatter, Scrubber, log_context
from depthfleet.shared.queue import make_celery
from depthfleet.shared.settings import Settings
from support import System, poll, s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

TENANT, API_KEY = "obs", "key-obs-5d1e7c29ab"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
WRONG_KEY = "key-wrong-8c2f03aa41"
PHOTOS = 24
PHOTO_SIZE = (240, 320)
PER_TASK = 4


# ------------------------------------------------------------------------------- helpers
Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(response.text)
            for s in family.samples]


def values(samples: Samples, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``."""
    return [value for sample, have, value in samples
            if sample == name and labels.items() <= have.items()]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(values(samples, name, **labels))


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def worker_metrics_url(port: int, path: str = "/metrics") -> str:
    return f"http://127.0.0.1:{port}{path}"


def start_worker(system: System) -> tuple[Any, int]:
    """A worker with 2 pool processes and its metrics server on a free port, once it consumes.

    Celery's own ping says so (as the image's health check does), not our readiness route,
    which is under test.
    """
    port = free_port()
    proc = system.start_worker(concurrency=2, extra_env={"DEPTHFLEET_METRICS_PORT": str(port)})
    control = make_celery(Settings.from_env(system.env)).control
    wait_until(lambda: control.ping(timeout=1, pattern=f"worker-{proc.pid}@*", matcher="glob"),
               "worker", 240, proc)
    return proc, port


def try_scrape(url: str) -> Samples | str:
    """The samples, or why there are none (the worker test then says so)."""
    try:
        return scrape(url)
    except (requests.RequestException, AssertionError) as exc:
        return f"{url}: {exc}"


def submit(system: System, files: list[tuple[str, bytes]]) -> str:
    response = requests.post(f"{system.api_url}/v1/jobs", headers=AUTH, timeout=120,
                             files=[("file", f) for f in files])
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job_status(system: System, job_id: str) -> dict[str, Any]:
    return requests.get(f"{system.api_url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()


def photos(count: int, first_seed: int) -> list[tuple[str, bytes]]:
    return [(f"p{first_seed + i}.jpg", tiny_jpeg(first_seed + i, PHOTO_SIZE)) for i in range(count)]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (the assertion names the first that is not)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"line {number} is not JSON: {line[:200]!r}") from None
    return entries


def byte_traces(data: bytes) -> list[bytes]:
    """How a slice from the middle of ``data`` would look in a log: raw, repr, hex, base64."""
    start = len(data) // 2 // 3 * 3  # base64-aligned, so the encoding of the slice is found
    chunk = data[start:start + 24]
    return [chunk, repr(chunk)[2:-1].encode(), chunk.hex().encode(), base64.b64encode(chunk)]


def readiness(port: int, timeout: float = 30) -> Any:
    """The worker's readiness answer once it is 200 (or the last one), or why there is none."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.get(worker_metrics_url(port, "/readyz"), timeout=5)
        except requests.RequestException as exc:
            return f"no readiness route: {exc}"
        if response.ok or time.monotonic() > deadline:
            return response.status_code, response.json()
        time.sleep(0.2)


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in raw if entry)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    system = s3_system(tmp_path_factory.mktemp("ops"), redis_db_url, s3_server, checkpoint_path,
                       "depthfleet-ops", DEPTHFLEET_API_KEYS=f"{TENANT}:{API_KEY}",
                       DEPTHFLEET_ITEMS_PER_TASK=str(PER_TASK))
    try:
        system.start_api()
        yield system
    finally:
        system.stop()


@dataclass
class Batch:
    """A batch run on one worker: scrapes before, during and after, readiness, the logs.

    Worker scrapes hold an error text instead of samples when the worker serves no metrics.
    """

    job_id: str
    files: list[tuple[str, bytes]]
    api: list[Samples]
    worker: list[Samples | str]
    worker_ready: Any  # (status, body) of the worker's /readyz, or why there was none
    api_log: str
    worker_log: str
    metrics_dir_left: bool


@pytest.fixture(scope="module")
def batch(system: System) -> Batch:
    """A batch of photos and one truncated JPEG (it fails in the worker), scraped throughout."""
    worker, port = start_worker(system)
    ready = readiness(port)
    api: list[Samples] = []
    workers: list[Samples | str] = []

    def record() -> None:
        api.append(scrape(f"{system.api_url}/metrics"))
        workers.append(try_scrape(worker_metrics_url(port)))

    record()
    requests.get(f"{system.api_url}/v1/jobs/none", headers={"Authorization": f"Bearer {WRONG_KEY}"},
                 timeout=10)
    truncated = tiny_jpeg(999, PHOTO_SIZE)[:2000]  # a sound header: only decoding fails
    files = [*photos(PHOTOS, 0), ("truncated.jpg", truncated)]
    job_id = submit(system, files)
    while job_status(system, job_id)["pending"]:
        record()
        time.sleep(0.05)
    record()
    metrics_dir = process_environ(worker.pid)["PROMETHEUS_MULTIPROC_DIR"]
    logs = system.log("api.log"), system.log(f"worker-{len(system.workers) - 1}.log")
    _stop(worker)
    return Batch(job_id, files, api, workers, ready, *logs, Path(metrics_dir).exists())


# ------------------------------------------------------------------------------- metrics
def test_api_metrics_exist_and_move(batch: Batch) -> None:
    before, after = batch.api[0], batch.api[-1]
    job_route = "/v1/jobs/<job_id>"
    duration = "depthfleet_http_request_duration_seconds_count"
    assert grew(before, after, duration, method="POST", route="/v1/jobs", status="202") == 1
    assert grew(before, after, duration, method="GET", route=job_route, status="200") >= 1
    assert grew(before, after, duration, method="GET", route=job_route, status="401") == 1
    assert values(after, "depthfleet_http_request_duration_seconds_bucket", route="/v1/jobs")
    assert values(after, "depthfleet_queue_depth", queue="depthfleet") == [0]
    assert values(after, "depthfleet_queue_depth", queue="depthfleet.ingest") == [0]
    assert values(after, "depthfleet_queue_unacked") == [0]
    assert max(total(s, "depthfleet_items_pending") for s in batch.api) >= 1
    assert values(after, "depthfleet_items_pending") == [0]
    memory = "depthfleet_process_resident_memory_bytes"
    assert len(values(after, memory, component="api", role="main")) == 1
    children = values(after, memory, component="api", role="child")
    assert len(children) == 2 and min(children) > 20e6, children


def worker_scrapes(batch: Batch) -> list[Samples]:
    """Needs the worker integration (worker/app.py, worker/tasks.py, shared/render.py lines)."""
    errors = [s for s in batch.worker if isinstance(s, str)]
    assert not errors, errors[0]
    return [s for s in batch.worker if not isinstance(s, str)]


def test_worker_metrics_exist_and_move(batch: Batch) -> None:
    scrapes = worker_scrapes(batch)
    before, after = scrapes[0], scrapes[-1]
    count = len(batch.files)
    assert grew(before, after, "depthfleet_items_total", outcome="succeeded") == PHOTOS
    assert grew(before, after, "depthfleet_items_total", outcome="failed") == 1
    assert grew(before, after, "depthfleet_jobs_total", outcome="partial") == 1
    assert grew(before, after, "depthfleet_item_queue_wait_seconds_count") == count
    assert grew(before, after, "depthfleet_item_stage_seconds_count", stage="decode") == count
    for stage in ("inference", "encode"):  # the truncated photo never got that far
        assert grew(before, after, "depthfleet_item_stage_seconds_count", stage=stage) == PHOTOS
    assert grew(before, after, "depthfleet_item_stage_seconds_count", stage="storage") >= 2 * count
    assert grew(before, after, "depthfleet_item_stage_seconds_sum", stage="inference") > 0
    assert max(total(s, "depthfleet_items_in_flight") for s in scrapes) >= 1
    assert values(after, "depthfleet_items_in_flight") == [0]
    assert total(after, "depthfleet_model_load_seconds_count", phase="load") == 2
    assert total(after, "depthfleet_model_load_seconds_count", phase="prepare") == 1
    memory = "depthfleet_process_resident_memory_bytes"
    children = values(after, memory, component="worker", role="child")
    assert len(children) == 2 and min(children) > 50e6, children


def test_worker_health_and_cleanup(batch: Batch) -> None:
    assert batch.worker_ready == (200, {"status": "ready", "pool_processes": 2, "loading": 0})
    assert not batch.metrics_dir_left, "the worker's metrics directory outlived it"


# ---------------------------------------------------------------------------------- logs
def test_api_log_is_json_lines_with_tenant(batch: Batch) -> None:
    api = json_lines(batch.api_log)
    post = [e for e in api if e.get("route") == "/v1/jobs" and e.get("method") == "POST"]
    assert post and post[-1]["status"] == 202 and post[-1]["tenant"] == TENANT
    assert any(e.get("status") == 401 and e.get("tenant") is None for e in api)
    assert all(e["component"] == "api" and "level" in e for e in api)


def test_worker_log_is_json_lines_about_the_job(batch: Batch) -> None:
    """Needs the worker integration (``observability.install`` in worker/app.py)."""
    worker = json_lines(batch.worker_log)
    about_job = [e for e in worker if e.get("job_id") == batch.job_id]
    assert len(about_job) >= len(batch.files) // PER_TASK, "a line per task at least"
    assert all(e.get("tenant") == TENANT and e.get("task_id") for e in about_job), about_job[:3]
    assert all(e["component"] == "worker" and "level" in e for e in worker)


def test_logs_hold_no_key_and_no_image_bytes(batch: Batch) -> None:
    text = batch.api_log + batch.worker_log
    raw = text.encode("utf-8", "surrogateescape")
    assert API_KEY not in text and WRONG_KEY not in text and "Bearer" not in text
    leaked = [name for name, data in batch.files for trace in byte_traces(data) if trace in raw]
    assert leaked == []


def test_log_lines_are_scrubbed_and_carry_context() -> None:
    """The formatter itself: context fields, bytes as lengths, secrets redacted."""
    formatter = JsonFormatter("test", Scrubber(["tenant-secret-key"]))
    logger = logging.getLogger("depthfleet.test")

    def line(msg: str, *args: Any) -> dict[str, Any]:
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None)
        return json.loads(formatter.format(record))

    with log_context(job_id="j1", item=3, tenant="t1"):
        entry = line("got %r from %s", b"\xff\xd8\xff\xe0 jpeg", "Bearer abc.def")
    assert entry["job_id"] == "j1" and entry["item"] == 3 and entry["tenant"] == "t1"
    assert entry["msg"] == "got '<9 bytes>' from Bearer [redacted]"
    url = "https://s3/b/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=0123abcd&x=1"
    assert line(url)["msg"] == ("https://s3/b/k?X-Amz-Credential=[redacted]"
                                "&X-Amz-Signature=[redacted]&x=1")
    assert line("key tenant-secret-key, redis://:pw0rd@r:6379/0")["msg"] == \
        "key [redacted], redis://:[redacted]@r:6379/0"
    assert "job_id" not in line("outside any job")


# ------------------------------------------------------------------------------ shutdown
def test_sigterm_mid_batch_finishes_current_task_and_loses_nothing(system: System) -> None:
    """SIGTERM: Celery's warm shutdown takes no new task and finishes the running ones; the
    rest stays queued for another worker; every item ends succeeded, each computed once."""
    store = JobStore(connect(system.env["DEPTHFLEET_REDIS_URL"]), 3600)
    runs_before = store.model_runs()
    count = 80
    job_id = submit(system, photos(count, 1000))
    first, _ = start_worker(system)
    poll(lambda: job_status(system, job_id), lambda s: s["succeeded"] >= 2 * PER_TASK, 120, 0.05)
    done_at_signal = job_status(system, job_id)["succeeded"]
    os.kill(first.pid, signal.SIGTERM)
    started = time.monotonic()
    assert first.wait(timeout=90) == 0
    exited_in = time.monotonic() - started
    items = requests.get(f"{system.api_url}/v1/jobs/{job_id}/items?limit={count}", headers=AUTH,
                         timeout=10).json()["items"]
    states = [item["status"] for item in items]
    assert "running" not in states, "the worker left an item half done"
    assert states.count("succeeded") <= done_at_signal + 2 * 2 * PER_TASK, "it kept taking work"
    assert "queued" in states, "the batch was over before the signal: nothing was tested"
    assert exited_in < 60, f"warm shutdown took {exited_in:.0f}s"

    second, _ = start_worker(system)
    try:
        final = poll(lambda: job_status(system, job_id), lambda s: s["pending"] == 0, 300)
    finally:
        _stop(second)
    assert (final["total"], final["succeeded"], final["failed"]) == (count, count, 0)
    assert store.model_runs() - runs_before == count, "an item was computed twice or never"
