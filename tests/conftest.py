"""Shared test fixtures: reference data paths and deterministic stand-in checkpoints.

The official MiDaS weights cannot be downloaded in CI, so checkpoints are generated at test
time with ``shared/midas/detweights.py`` (seed 1234 reproduces the parity fixtures).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pytest

from depthfleet.shared.digests import sha256_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared"
MIDAS_REF = REFERENCE / "midas"
PARITY_DIR = MIDAS_REF / "parity"
PHOTOS_DIR = REFERENCE / "testdata" / "photos"
BAD_DIR = REFERENCE / "testdata" / "bad"
PARITY_SEED = 1234


def make_checkpoint(out: Path, seed: int = PARITY_SEED) -> Path:
    """Write detweights' checkpoint for ``seed`` to ``out`` (a bare state_dict, like the release file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(MIDAS_REF / "detweights.py"),
         str(MIDAS_REF / "midas_v21_small_256.keys.json"), str(seed), str(out)],
        check=True, capture_output=True,
    )
    return out


def load_manifest(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["files"]


def allowed_outcomes(entry: dict) -> set[str]:
    """What a testdata manifest entry allows: ``accept`` and/or ``reject: <code>`` strings."""
    return {entry["expected"].removesuffix(": first frame"), *entry.get("acceptable_alternatives", [])}


def outcome_of(record: dict) -> str:
    """An item or manifest record in the manifest's terms."""
    return "accept" if record["status"] == "succeeded" else f"reject: {record['error']['code']}"


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed-1234 stand-in checkpoint the parity fixtures were computed with."""
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "midas_v21_small_256.pt")


@pytest.fixture(scope="session")
def checkpoint_sha256(checkpoint_path: Path) -> str:
    return sha256_file(checkpoint_path)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weights cache (and ONNX export) for every deployment of the session."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def photos_manifest() -> list[dict]:
    return load_manifest(PHOTOS_DIR)


@pytest.fixture(scope="session")
def bad_manifest() -> list[dict]:
    return load_manifest(BAD_DIR)


@dataclass(frozen=True)
class MotoServer:
    """A real S3 API server (moto) on loopback, with its access log."""

    endpoint: str
    log: Path

    def request_count(self, method: str, path: str, timeout: float = 5.0) -> int:
        """How many ``method path`` requests the server logged, e.g. ``("GET", "/bucket/key")``.

        The server logs a request just after answering it, so this waits up to ``timeout``
        for the first matching line.
        """
        deadline = time.monotonic() + timeout
        while True:
            count = self.log.read_text(errors="replace").count(f"{method} {path} HTTP/")
            if count or time.monotonic() > deadline:
                return count
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(log: Path, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    """``moto_server`` from the venv on ``host``:``port``, once it listens (loopback checked:
    bind ``0.0.0.0`` or loopback)."""
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", host, "-p", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """``moto_server`` from the venv as a child process for the whole session."""
    log = tmp_path_factory.mktemp("moto") / "server.log"
    port = _free_port()
    process = start_moto(log, port)
    try:
        yield MotoServer(f"http://127.0.0.1:{port}", log)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def s3_server(moto_server: MotoServer) -> str:
    """Endpoint URL of a real S3 server on loopback; create a uniquely named bucket per test."""
    return moto_server.endpoint


@pytest.fixture()
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials and region for clients of ``s3_server``; no ~/.aws, no metadata service."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def redis_db_url() -> Iterator[str]:
    """A database of the machine's real Redis (127.0.0.1:6379), emptied before and after.

    Each test module claims a free database 1..15 (a key in database 0, so that test sessions
    running side by side never share, and flush, one), so no queued task or counter of an
    earlier module or of another session leaks into its system.
    """
    import random

    import redis

    claims = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    owner = f"{os.getpid()}-{random.random()}"
    forced = os.environ.get("DEPTHFLEET_TEST_REDIS_DB")
    db = int(forced) if forced else _claim_redis_db(claims, owner)
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    if not forced and claims.get(f"df-test:db:{db}") == owner.encode():
        claims.delete(f"df-test:db:{db}")


def _claim_redis_db(claims: Any, owner: str, hold_seconds: int = 3600) -> int:
    """A database number no other test module holds (waits for one if all 15 are taken)."""
    import random

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for db in random.sample(range(1, 16), 15):
            if claims.set(f"df-test:db:{db}", owner, nx=True, ex=hold_seconds):
                return db
        time.sleep(1)
    raise RuntimeError("every Redis test database 1..15 stayed claimed for 10 minutes")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (``tests/webpage.py``), one per test module."""
    from webpage import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280 x 800 tab of ``browser`` with its own sessionStorage."""
    from webpage import tab

    with tab(browser) as opened:
        yield opened
