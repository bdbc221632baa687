"""What the fault tests break things with: real processes, real signals, real sockets.

- ``RedisServer``: a private ``redis-server`` with AOF on its own port, killable with SIGKILL
  and restartable on the same port and data folder.
- ``TcpProxy``: a loopback TCP relay in front of the S3 server; ``cut()`` closes the listening
  socket and every open connection (clients get "connection refused"), ``restore()`` listens
  again on the same port. That is what an S3 server that went away looks like to boto3.
- Process helpers: the pool processes of a Celery worker, SIGKILL of the whole worker, the
  API restarted on the same port.
- ``assert_each_item_once``: counters, item records, stored objects and model runs agree
  that every item of a job took effect exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from depthfleet.client import Client
from depthfleet.local import _spawn, free_port, start_redis, wait_until
from depthfleet.shared.artifacts import ARTIFACTS, COMPACT, FULL_SIZE
from depthfleet.shared.jobs import JobStore, connect
from support import System, poll, tiny_jpeg

JOB_TIMEOUT = 300.0
# Small tasks and short leases/timeouts, so a fault lands mid-batch and recovery is quick.
MID_BATCH_ENV = {"DEPTHFLEET_ITEMS_PER_TASK": "2", "DEPTHFLEET_LEASE_SECONDS": "10",
                 "DEPTHFLEET_VISIBILITY_TIMEOUT": "30"}


class RedisServer:
    """``redis-server`` with an append-only file, as deployments run it (docs/reliability.md)."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.url = f"redis://{host}:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (or restart, on the same port and files)."""
        self.url, self.proc = start_redis(self.data_dir, self.port, self.host)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class TcpProxy:
    """Relays 127.0.0.1:``port`` to ``target``; can refuse every connection for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._guard = threading.Lock()

    def restore(self) -> None:
        """Listen (again) on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and drop every open connection, as a dead server would."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._guard:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._guard:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)
            with self._guard:
                self._conns.difference_update((src, dst))


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@dataclass
class Deployment:
    """A running (or about to run) system and handles on everything behind it."""

    system: System
    redis: RedisServer
    s3: TcpProxy | None  # None: storage is reached directly (tests/multihost cut the network)
    bucket: str
    s3_direct: Any  # boto3 client to the S3 server itself, never through the proxy

    @functools.cached_property
    def store(self) -> JobStore:
        return JobStore(connect(self.redis.url), 86400)

    def client(self, api_key: str | None = None) -> Client:
        return Client(self.system.api_url, api_key=api_key, timeout=60)

    def start(self, pool: int) -> subprocess.Popen:
        """One worker of ``pool`` processes with their models loaded, and the API."""
        worker = self.system.start_worker(concurrency=pool)
        self.system.start_api()
        wait_for_pool(worker, pool)
        return worker

    def objects(self, prefix: str) -> list[str]:
        """Every object key under ``df/{prefix}`` of the deployment's bucket."""
        keys: list[str] = []
        for page in self.s3_direct.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"df/{prefix}"):
            keys += [obj["Key"].removeprefix("df/") for obj in page.get("Contents", [])]
        return keys


# -- processes -------------------------------------------------------------------------------
def live_pool_pids(worker: subprocess.Popen) -> list[int]:
    """The prefork pool processes of a Celery worker's parent: its children, zombies aside."""
    children: list[int] = []
    for task in Path(f"/proc/{worker.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(p) for p in (task / "children").read_text().split()]
    return sorted(pid for pid in children if _alive(pid))


def _alive(pid: int) -> bool:
    """Running or sleeping, not a zombie waiting to be reaped by its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_pool(worker: subprocess.Popen, size: int, timeout: float = 120) -> list[int]:
    """The worker's ``size`` live pool processes, once it has them (after start or a kill)."""
    wait_until(lambda: len(live_pool_pids(worker)) == size, "worker pool", timeout, worker)
    return live_pool_pids(worker)


def kill_whole_worker(worker: subprocess.Popen) -> None:
    """SIGKILL the worker's parent and every pool process at once (its process group)."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def kill_all(system: System) -> None:
    """SIGKILL whatever a test left running (a warm shutdown would only cost time here)."""
    for proc in [*system.workers, system.api]:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def restart_api(system: System, down_seconds: float = 0.0) -> None:
    """SIGKILL the API (gunicorn and its workers) and start it again on the same port."""
    assert system.api is not None
    os.killpg(system.api.pid, signal.SIGKILL)
    system.api.wait()
    time.sleep(down_seconds)
    port = system.api_url.rsplit(":", 1)[1]
    system.api = _spawn([sys.executable, "-m", "depthfleet.cli", "api", "--port", port],
                        system.env, system.log_dir / "api.log")
    wait_until(lambda: requests.get(f"{system.api_url}/healthz", timeout=2).ok, "API", 60,
               system.api)


# -- jobs ------------------------------------------------------------------------------------
def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 64),
                 first_seed: int = 0) -> list[Path]:
    """``count`` distinct photo crops as ``folder/img-NNNN.jpg`` (distinct bytes: no dedup)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img-{first_seed + i:04d}.jpg"
        path.write_bytes(tiny_jpeg(first_seed + i, size))
        paths.append(path)
    return paths


def wait_finished(client: Client, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    return poll(lambda: client.status(job_id),
                lambda s: s["pending"] == 0 and not s["ingesting"], timeout)


def wait_progress(client: Client, job_id: str, done: int, timeout: float = JOB_TIMEOUT) -> dict:
    """Until at least ``done`` items finished (mid-batch moments for a fault)."""
    return poll(lambda: client.status(job_id),
                lambda s: s["succeeded"] + s["failed"] >= done, timeout, interval=0.1)


def all_items(client: Client, job_id: str) -> list[dict[str, Any]]:
    return list(client.iter_items(job_id))



# -- exactly once ----------------------------------------------------------------------------
# What a worker stores by default: the compact set and meta.json (full size renders on read).
ARTIFACT_FILES = {*(ARTIFACTS[name].filename for name in COMPACT), "meta.json"}
# What a default job offers per item: the compact set stored, full size rendered on read (the
# 3D artifacts only when asked for).
OFFERED = {*COMPACT, *FULL_SIZE}


def assert_each_item_once(deployment: Deployment, client: Client, job_id: str, count: int,
                          tenant: str = "local", extra_runs: int = 0,
                          other_items: int = 0) -> dict[str, int]:
    """Counters, item records, stored objects and model runs all say: each item exactly once.

    ``extra_runs`` bounds the model runs that may be repeated: one per process killed while
    it computed; ``other_items`` ran the model in other jobs of the deployment. Returns the
    global stats for the report.
    """
    status = client.status(job_id)
    assert (status["total"], status["succeeded"], status["failed"], status["pending"]) == \
        (count, count, 0, 0), status
    items = all_items(client, job_id)
    assert sorted(item["index"] for item in items) == list(range(count))
    assert all(item["status"] == "succeeded" and set(item["artifacts"]) == OFFERED
               for item in items)
    digests = {item["sha256"] for item in items}
    assert len(digests) == count, "inputs must be distinct for this check"
    folders = _objects_by_folder(deployment.objects(f"t/{tenant}/results/"))
    results = {folder: files for folder, files in folders.items()
               if folder.split("/")[4] in digests}
    assert len(results) == count, f"{len(results)} result folders for {count} items"
    assert all(files == ARTIFACT_FILES for files in results.values()), results
    inputs = {key.rsplit("/", 1)[1] for key in deployment.objects(f"t/{tenant}/inputs/")}
    assert digests <= inputs
    store = deployment.store
    stats = {"model_runs": store.model_runs(), "pending_items": store.pending_items(),
             "reclaimed": store.stat("items_reclaimed"), "reused": status["reused"]}
    assert stats["pending_items"] == 0, stats
    assert store.expired_leases(now=float("inf")) == [], "leases left behind"
    runs = count + other_items
    assert runs <= stats["model_runs"] <= runs + extra_runs, stats
    return stats


def _objects_by_folder(keys: list[str]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for key in keys:
        folder, _, name = key.rpartition("/")
        folders.setdefault(folder, set()).add(name)
    return folders
