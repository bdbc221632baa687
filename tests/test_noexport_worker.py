"""A worker installed without the ``export`` extra (no torch, torchvision, timm, onnx) works
from the export another machine shared through storage, and refuses to start without one.

``.venv-noexport/`` is a real second install of this repository, made by
``VENV=.venv-noexport EXTRAS= scripts/bootstrap`` (plain ``pip install -e .``) and kept until
pyproject.toml changes, so only the first run pays for it. The main venv plays the machine
with the extra: its ``depthfleet export-model`` exports and uploads to the S3 server process;
the torch-free worker, with an empty cache, downloads that file and processes a job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from conftest import PHOTOS_DIR, REPO
from depthfleet.shared.layout import model_key, model_manifest_key
from depthfleet.shared.model.onnx_export import EXPORT_PACKAGES, EXPORT_VERSION
from support import System, poll, s3_location, s3_system

NOEXPORT = REPO / ".venv-noexport"
TENANT_KEYS = "alice:key-alice-123"
ALICE = {"Authorization": "Bearer key-alice-123"}
EXIT_NO_MODEL = 3  # worker.app.EXIT_NO_MODEL (not imported: that module builds a Celery app)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the Celery parent and its pool processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def mapped_libraries(pid: int) -> set[str]:
    """File names of the shared objects process ``pid`` has mapped."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name for line in lines if ".so" in line}


@pytest.fixture(scope="module")
def noexport_python() -> str:
    done = subprocess.run(["scripts/bootstrap"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "VENV": NOEXPORT.name, "EXTRAS": ""}, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(NOEXPORT / "bin" / "python")


@pytest.fixture()
def fleet(tmp_path, redis_db_url, s3_server, checkpoint_path) -> Iterator[System]:
    bucket = f"noexport-{uuid.uuid4().hex[:12]}"  # a bucket of its own: no shared export yet
    system = s3_system(tmp_path, redis_db_url, s3_server, checkpoint_path, bucket,
                       DEPTHFLEET_API_KEYS=TENANT_KEYS, DEPTHFLEET_METRICS_PORT="0")
    yield system
    system.stop()


def test_worker_path_does_not_import_torch() -> None:
    """Importing the worker, the API, the pipeline and the CLI loads none of the export extra."""
    code = ("import sys, depthfleet.cli, depthfleet.commands, depthfleet.shared.pipeline, "
            "depthfleet.worker.app, depthfleet.worker.tasks, depthfleet.api; "
            f"print(sorted(set(sys.modules) & set({EXPORT_PACKAGES!r})))")
    env = {**os.environ, "DEPTHFLEET_REDIS_URL": "redis://127.0.0.1:6379/0",
           "DEPTHFLEET_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
def test_install_without_the_extra_has_no_torch(noexport_python: str) -> None:
    code = ("import importlib.util as u, depthfleet.worker.tasks, depthfleet.api; "
            f"print([m for m in {EXPORT_PACKAGES!r} if u.find_spec(m)])")
    done = subprocess.run([noexport_python, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "DEPTHFLEET_METRICS_PORT": "0"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
def test_worker_without_the_extra_refuses_to_start_without_a_shared_export(
        fleet: System, noexport_python: str) -> None:
    worker = fleet.start_worker(python=noexport_python)
    assert worker.wait(timeout=180) == EXIT_NO_MODEL
    log = fleet.log("worker-0.log")
    assert "worker refuses to start" in log
    assert "depthfleet export-model" in log and "depthfleet[export]" in log


@pytest.mark.integration
def test_worker_without_the_extra_runs_the_shared_export(
        fleet: System, noexport_python: str, checkpoint_sha256: str) -> None:
    exporter = {**fleet.env, "DEPTHFLEET_CACHE_DIR": str(fleet.log_dir.parent / "exporter")}
    done = subprocess.run([sys.executable, "-m", "depthfleet.cli", "export-model"], env=exporter,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    name = f"midas_small-{checkpoint_sha256}-v{EXPORT_VERSION}.onnx"
    assert done.stdout.strip() == f"{fleet.env['DEPTHFLEET_STORAGE_URL']}/{model_key(name)}"
    bucket, root = s3_location(fleet)
    s3 = boto3.client("s3", endpoint_url=fleet.env["DEPTHFLEET_S3_ENDPOINT"],
                      region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    assert s3.head_object(Bucket=bucket, Key=root + model_manifest_key(name))["ContentLength"]

    worker = fleet.start_worker(python=noexport_python)
    fleet.start_api()
    photo = PHOTOS_DIR / "coffee.jpg"
    job = requests.post(f"{fleet.api_url}/v1/jobs", headers=ALICE, timeout=60,
                        files=[("file", (photo.name, photo.read_bytes()))]).json()
    final = poll(lambda: requests.get(f"{fleet.api_url}/v1/jobs/{job['id']}", headers=ALICE,
                                      timeout=10).json(),
                 lambda s: s["pending"] == 0 and not s["ingesting"], 300)
    assert final["status"] == "succeeded", final
    assert (Path(fleet.env["DEPTHFLEET_CACHE_DIR"]) / "onnx" / name).is_file()
    assert "downloaded from" in fleet.log("worker-0.log")
    processes = descendants(worker.pid)
    assert len(processes) >= 2  # the Celery parent and its pool process
    libraries = [mapped_libraries(pid) for pid in processes]
    # Every process maps ONNX Runtime (so the check sees what a process loads), none torch.
    assert all(any("onnxruntime" in lib for lib in libs) for libs in libraries), libraries
    assert not [lib for libs in libraries for lib in libs if "torch" in lib]
