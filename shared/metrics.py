"""Prometheus metrics of the API and the workers: every series is defined here, in one place.

Both the API (gunicorn) and a worker (Celery prefork) run several processes, so metrics use
prometheus_client's multiprocess mode: ``depthfleet api`` and ``depthfleet worker`` give each
instance a fresh ``PROMETHEUS_MULTIPROC_DIR`` before exec, every process writes its values
there, and whichever process serves ``/metrics`` merges them (``scrape``). Without that
variable (``depthfleet predict``, tests calling ``create_app``) values stay in the process.

Facts that live in Redis (queue depth, pending items) are read when scraped
(``QueueCollector``), and memory is read from ``/proc`` (``ProcessMemoryCollector``), so
neither can go stale.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from depthfleet.shared.jobs import JobStore

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's variable, not a setting
SENT_AT_HEADER = "depthfleet_sent_at"  # task header: when the task was published (epoch s)

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_DURATION = Histogram(
    "depthfleet_http_request_duration_seconds", "API request time by route and status",
    ["method", "route", "status"], buckets=HTTP_BUCKETS)
ITEMS = Counter("depthfleet_items", "Items finished, by outcome (succeeded, failed, cancelled)",
                ["outcome"])
JOBS = Counter("depthfleet_jobs", "Jobs finished, by outcome (succeeded, failed, partial, "
               "cancelled); counted once, when the job first finishes", ["outcome"])
QUEUE_WAIT = Histogram("depthfleet_item_queue_wait_seconds",
                       "From a task's publication to the start of one of its items",
                       buckets=WAIT_BUCKETS)
STAGE = Histogram("depthfleet_item_stage_seconds",
                  "Time of one stage of an item: decode, inference, encode, storage",
                  ["stage"], buckets=STAGE_BUCKETS)
IN_FLIGHT = Gauge("depthfleet_items_in_flight", "Items a worker process is processing now",
                  multiprocess_mode="livesum")
MODEL_LOAD = Histogram("depthfleet_model_load_seconds",
                       "Model start-up: prepare (fetch, verify, export; worker parent) and "
                       "load (one pool process)", ["phase"], buckets=LOAD_BUCKETS)
MODEL_LOADED_NAME = "depthfleet_worker_model_loaded"
MODEL_LOADED = Gauge(MODEL_LOADED_NAME,
                     "1 once this pool process holds a warm model", multiprocess_mode="liveall")


@contextmanager
def observe_stage(stage: str) -> Iterator[None]:
    """Time a stage of an item (``decode``, ``inference``, ``encode``, ``storage``)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE.labels(stage=stage).observe(time.perf_counter() - started)


def count_item(outcome: str, moved: bool) -> bool:
    """Count an item that reached ``outcome`` if this call moved it there; returns ``moved``."""
    if moved:
        ITEMS.labels(outcome=outcome).inc()
    return moved


# -- task publication time (queue wait) ------------------------------------------------------
def stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish`` receiver: record when a task was sent (retries re-stamp)."""
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


def connect_publish_stamp() -> None:
    """Stamp every task this process publishes (the API sends items, workers send retries)."""
    from celery.signals import before_task_publish

    before_task_publish.connect(stamp_publish_time, weak=False,
                                dispatch_uid="depthfleet-publish-stamp")


def publish_time(request: Any) -> float | None:
    """When the task behind a Celery ``request`` was published, if its publisher stamped it."""
    value = getattr(request, SENT_AT_HEADER, None) or (request.headers or {}).get(SENT_AT_HEADER)
    return float(value) if value else None


# -- multiprocess mode -----------------------------------------------------------------------
def fresh_metrics_dir(component: str) -> str:
    """A new, empty directory for one instance's metric files (stale files would add up).

    Named after this process, which keeps its pid through exec; directories left by killed
    instances (their process is gone, or had this pid before: a restarted container's PID 1)
    are removed on the way.
    """
    pid = os.getpid()
    for old in Path(tempfile.gettempdir()).glob("depthfleet-*-metrics-*-*"):
        owner = old.name.split("-")[3]
        if owner.isdigit() and (int(owner) == pid or not process_alive(int(owner))):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"depthfleet-{component}-metrics-{pid}-")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def remove_metrics_dir() -> None:
    """At an instance's exit: delete the directory ``fresh_metrics_dir`` made (only that)."""
    path = multiprocess_dir()
    if path and Path(path).name.startswith("depthfleet-"):
        shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Running or sleeping, not gone and not a zombie awaiting its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def sweep_dead_processes(path: str) -> None:
    """Drop the live gauges (in flight, model loaded) of processes that died, even by SIGKILL."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(Path(name).stem.rsplit("_", 1)[1])
        if not process_alive(pid):
            mark_process_dead(pid, path)


class _ThisProcess:
    """This process's default registry, for scrapes outside multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape(*collectors: Any) -> bytes:
    """Prometheus text of every process of this instance plus ``collectors``."""
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path:
        sweep_dead_processes(path)
        MultiProcessCollector(registry, path)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def merged_values(path: str, name: str) -> dict[int, float]:
    """``pid -> value`` of a ``liveall`` gauge across the processes writing to ``path``."""
    files = glob.glob(os.path.join(path, "gauge_liveall_*.db"))
    values: dict[int, float] = {}
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        if metric.name == name:
            values.update({int(s.labels["pid"]): s.value for s in metric.samples})
    return values


# -- read at scrape time ---------------------------------------------------------------------
def queue_client(redis_url: str) -> redis.Redis:
    """A Redis client that fails fast: a scrape during an outage must not hang."""
    return redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)


class QueueCollector:
    """Tasks waiting per Celery queue, tasks reserved by workers, and items pending.

    kombu's Redis transport keeps a queue as lists named after it (one per priority step);
    a task a worker reserved leaves the list for the ``unacked`` hash until acknowledged, so
    queue depth alone misses running work: ``depthfleet_items_pending`` counts it.
    """

    def __init__(self, store: JobStore, queues: Iterable[str]) -> None:
        self.store = store
        self.queues = tuple(queues)

    def _read(self) -> tuple[list[int], int, int]:
        from kombu.transport.redis import Channel

        steps = Channel.priority_steps
        with self.store.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                for step in steps:
                    pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
            pipe.hlen(Channel.unacked_key)
            counts = pipe.execute()
        depths = [sum(counts[i * len(steps):(i + 1) * len(steps)]) for i in range(len(self.queues))]
        return depths, counts[-1], self.store.pending_items()

    @staticmethod
    def describe() -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("depthfleet_queue_depth", "Tasks waiting in a Celery queue",
                                  labels=["queue"]),
                GaugeMetricFamily("depthfleet_queue_unacked",
                                  "Tasks reserved by workers, not yet acknowledged", labels=[]),
                GaugeMetricFamily("depthfleet_items_pending",
                                  "Items queued or running, in every job", labels=[])]

    def collect(self) -> Iterator[Metric]:
        try:
            depths, unacked, pending = self._read()
        except redis.RedisError:
            return  # Redis down: these series vanish (alert on absent()), the scrape succeeds
        depth, reserved, items = self.describe()
        for queue, count in zip(self.queues, depths):
            depth.add_metric([queue], count)
        reserved.add_metric([], unacked)
        items.add_metric([], pending)
        yield from (depth, reserved, items)


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc``)."""
    children: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            children += [int(p) for p in Path(task).read_text().split()]
        except FileNotFoundError:
            continue
    return sorted(children)


def resident_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` from ``/proc/<pid>/status``, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


class ProcessMemoryCollector:
    """Resident memory of a process tree: the main process (gunicorn master, Celery parent)
    and its children (gunicorn workers, pool processes), read from ``/proc`` when scraped."""

    def __init__(self, component: str, main_pid: int) -> None:
        self.component = component
        self.main_pid = main_pid

    @staticmethod
    def describe() -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("depthfleet_process_resident_memory_bytes",
                                  "Resident memory (VmRSS) per process",
                                  labels=["component", "role", "pid"])]

    def collect(self) -> Iterator[Metric]:
        family, = self.describe()
        processes = [("main", self.main_pid), *(("child", p) for p in child_pids(self.main_pid))]
        for role, pid in processes:
            rss = resident_bytes(pid)
            if rss is not None:
                family.add_metric([self.component, role, str(pid)], rss)
        yield family
