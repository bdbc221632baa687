"""Starting the real system for integration tests: API and Celery workers as separate processes.

Nothing here mocks our own components: the API is the gunicorn process ``depthfleet api``
starts, workers are ``depthfleet worker`` processes, Redis is the machine's real server and
storage an S3 server process spoken to over HTTP.
"""

from __future__ import annotations

import functools
import io
import tarfile
import zipfile
from contextlib import contextmanager
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import requests
from PIL import Image

from conftest import PHOTOS_DIR
from depthfleet.local import _spawn, _stop, free_port, wait_until

REDIS_HOST = "127.0.0.1:6379"


@dataclass
class System:
    """A running deployment: its API URL, its environment and its processes."""

    env: dict[str, str]
    log_dir: Path
    api_url: str = ""
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_api(self, processes: int = 2) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.api = _spawn([sys.executable, "-m", "depthfleet.cli", "api", "--port", str(port),
                           "--processes", str(processes)], self.env, self.log_dir / "api.log")
        wait_until(lambda: requests.get(f"{self.api_url}/readyz", timeout=2).ok, "API", 60,
                   self.api)

    def start_worker(self, concurrency: int = 1, threads: int = 1,
                     extra_env: dict[str, str] | None = None,
                     python: str = sys.executable,
                     prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """A ``depthfleet worker`` process; ``python`` picks the install (venv) it runs from,
        ``prefix`` runs it under e.g. ``ip netns exec HOST`` (which execs it: the process
        keeps its pid and group)."""
        env = {**self.env, **(extra_env or {})}
        n = len(self.workers)
        proc = _spawn([*prefix, python, "-m", "depthfleet.cli", "worker", "--concurrency",
                       str(concurrency), "--threads", str(threads)], env,
                      self.log_dir / f"worker-{n}.log")
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            _stop(proc)

    def log(self, name: str) -> str:
        path = self.log_dir / name
        return path.read_text(errors="replace") if path.exists() else ""


def system_env(redis_url: str, storage_url: str, s3_endpoint: str | None, weights: Path,
               cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPTHFLEET_")}
    env.update({
        "DEPTHFLEET_REDIS_URL": redis_url,
        "DEPTHFLEET_STORAGE_URL": storage_url,
        "DEPTHFLEET_WEIGHTS": str(weights),
        "DEPTHFLEET_CACHE_DIR": str(cache_dir),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONUNBUFFERED": "1",
    })
    if s3_endpoint:
        env["DEPTHFLEET_S3_ENDPOINT"] = s3_endpoint
    env.update(extra)
    return env


def s3_system(root: Path, redis_url: str, s3_endpoint: str, weights: Path, bucket: str,
              **extra: str) -> System:
    """A deployment (not started yet) storing under a new bucket of the S3 server."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket=bucket)
    env = system_env(redis_url, f"s3://{bucket}/df", s3_endpoint, weights, root / "cache", **extra)
    return System(env, root / "logs")


def s3_location(system: System) -> tuple[str, str]:
    """(bucket, root) of an S3 system's storage: object ``key`` is ``root + key`` there."""
    url = urlparse(system.env["DEPTHFLEET_STORAGE_URL"])
    root = url.path.strip("/")
    return url.netloc, f"{root}/" if root else ""


def s3_listing(system: System, prefix: str) -> dict[str, tuple[int, str]]:
    """Every object under ``prefix`` (a storage key prefix), listed by boto3 from the S3
    server itself rather than through our storage code: key -> (size, ETag)."""
    import boto3

    bucket, root = s3_location(system)
    client = boto3.client("s3", endpoint_url=system.env["DEPTHFLEET_S3_ENDPOINT"],
                          region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=root + prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"].removeprefix(root)] = (obj["Size"], obj["ETag"])
    return found


def poll(fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool],
         timeout: float, interval: float = 0.5) -> dict[str, Any]:
    """Call ``fetch`` until ``done`` holds for its result; fail with the last result on timeout."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s; last: {last}")


@functools.lru_cache(maxsize=2)
def _photo(name: str) -> np.ndarray:
    return cv2.imread(str(PHOTOS_DIR / name))


def tiny_jpeg(seed: int, size: tuple[int, int] = (48, 64), source: str = "coffee.jpg") -> bytes:
    """A photo-like JPEG crop whose bytes depend on ``seed`` (distinct inputs, no dedup)."""
    base = _photo(source)
    y, x = (seed * 7) % (base.shape[0] - size[0]), (seed * 13) % (base.shape[1] - size[1])
    ok, data = cv2.imencode(".jpg", base[y:y + size[0], x:x + size[1]])
    assert ok
    return data.tobytes()


def jpeg2000(kind: str, size: tuple[int, int] = (451, 301), source: str = "chelsea.jpg") -> bytes:
    """A lossy JPEG 2000 of a photo, as digitisation masters often are: a ``jp2`` file or a
    bare ``j2k`` codestream, written by Pillow's OpenJPEG."""
    photo = Image.open(PHOTOS_DIR / source).convert("RGB").resize(size)
    out = io.BytesIO()
    photo.save(out, "JPEG2000", no_jp2=kind == "j2k", irreversible=True, quality_mode="rates",
               quality_layers=[12])
    return out.getvalue()


@contextmanager
def running(system: System, workers: tuple[int, ...] = (1, 1)) -> Iterator[System]:
    """Start one worker per entry of ``workers`` (its pool size) and the API; stop all after."""
    try:
        for concurrency in workers:
            system.start_worker(concurrency=concurrency)
        system.start_api()
        yield system
    finally:
        system.stop()


def build_archive(members: dict[str, bytes], kind: str) -> bytes:
    """A ``zip``, ``tar`` or ``tar.gz`` of ``members`` plus a symlink entry ``link.jpg``."""
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(zipfile.ZipInfo(name), data)
            link = zipfile.ZipInfo("link.jpg")
            link.external_attr = 0o120777 << 16
            archive.writestr(link, "/etc/passwd")
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    return buffer.getvalue()


def openapi_problems(value: Any, schema: str) -> list[str]:
    """Why ``value`` (an answer's JSON) does not fit ``components.schemas[schema]`` of the
    served OpenAPI document; empty if it does."""
    from openapi_schema_validator import OAS31Validator

    from depthfleet.api.openapi import document

    root = {"$ref": f"#/components/schemas/{schema}", "components": document()["components"]}
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in OAS31Validator(root).iter_errors(value)]
