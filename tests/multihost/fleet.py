"""A DepthFleet spread over hosts of its own (``netns``): what the multi-host tests drive.

- services host (``10.77.0.1``): a private ``redis-server`` with AOF (exact counters), the S3
  server (moto) and the API; the test's own thread runs here too, as an operator's would;
- worker hosts ``w1``, ``w2``: one ``depthfleet worker`` each, under a hostname of its own
  (``unshare --uts``), optionally with its clock skewed by libfaketime.

``assert_matches_predict`` checks every stored artifact byte for byte against ``depthfleet
predict`` run on the same photos outside the fleet.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthfleet.shared.artifacts import ARTIFACTS, COMPACT
from depthfleet.shared.jobs import TERMINAL
from faults.faultkit import Deployment, all_items, wait_finished, wait_for_pool
from multihost.netns import Host, Network, Service

REDIS_PORT = 6379
S3_PORT = 5000
LEASE = 6  # seconds: the reaper sweeps every LEASE / 3
# Small tasks, short leases; a visibility timeout far above any clock skew tested (kombu
# decides redelivery of unacknowledged messages by each consumer's own clock).
MULTIHOST_ENV = {"DEPTHFLEET_ITEMS_PER_TASK": "2", "DEPTHFLEET_LEASE_SECONDS": str(LEASE),
                 "DEPTHFLEET_VISIBILITY_TIMEOUT": "900"}
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
COMPACT_FILES = {ARTIFACTS[name].filename: name for name in COMPACT}


def skewed_env(seconds: int) -> dict[str, str]:
    """Every process started with this sees wall-clock time ``seconds`` off (libfaketime);
    monotonic clocks stay true, as on a host whose NTP is off."""
    if not seconds:
        return {}
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"{seconds:+d}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@dataclass
class Fleet(Deployment):
    """A ``Deployment`` whose workers run on hosts of their own."""

    net: Network | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    skews: dict[str, int] = field(default_factory=dict)
    _logs: dict[str, str] = field(default_factory=dict)

    @property
    def network(self) -> Network:
        assert self.net is not None
        return self.net

    def service(self, name: str) -> Service:
        """``redis`` or ``s3`` on the services host, as a cut names it."""
        return Service(self.network["services"], {"redis": REDIS_PORT, "s3": S3_PORT}[name])

    def start_worker(self, host_name: str, skew: int = 0) -> subprocess.Popen:
        """One worker of one pool process on ``host_name``, its clock ``skew`` seconds off."""
        host = self.network[host_name]
        self.skews[host_name] = skew
        self._logs[host_name] = f"worker-{len(self.system.workers)}.log"
        proc = self.system.start_worker(concurrency=1, extra_env=skewed_env(skew),
                                        prefix=on_host(host))
        self.workers[host_name] = proc
        return proc

    def wait_ready(self) -> None:
        for proc in self.workers.values():
            wait_for_pool(proc, 1)

    def kill_worker(self, host_name: str) -> None:
        """SIGKILL the host's whole worker: the host is gone."""
        proc = self.workers[host_name]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log(self, host_name: str) -> str:
        return self.system.log(self._logs[host_name])

    def host_clock(self, host_name: str) -> float:
        """time.time() as a process started on the host sees it."""
        env = {**os.environ, **skewed_env(self.skews.get(host_name, 0))}
        out = subprocess.run([*self.network[host_name].exec_prefix, sys.executable, "-c",
                              "import time; print(time.time())"], env=env, check=True,
                             capture_output=True, text=True).stdout
        return float(out)


def on_host(host: Host) -> tuple[str, ...]:
    """Run a command on ``host``: its network namespace and a hostname of its own (each
    step execs the next, so the command keeps the pid the test started)."""
    return (*host.exec_prefix, "unshare", "--uts", "sh", "-c",
            f'hostname {host.name} && exec "$@"', host.name)


def job_state(fleet: Fleet, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's status and every item's record as stored (times and worker included), to
    compare before and after late writes."""
    status = fleet.client().status(job_id)
    return status, fleet.store.items(job_id, 0, status["total"])


def assert_unchanged(fleet: Fleet, job_id: str, before: tuple[dict, list[dict]]) -> None:
    """Nothing moved since ``before`` (a finished job): no count, no record, no state."""
    status, items = job_state(fleet, job_id)
    assert status == before[0]
    moved = [(old, new) for old, new in zip(before[1], items) if old != new]
    assert not moved, f"items changed after the job finished: {moved}"


def mid_item(fleet: Fleet, host_name: str, job_id: str, fault: Callable[[], None],
             timeout: float = 60) -> dict[str, Any]:
    """Apply ``fault`` at a moment the host is running an item of the job, and return that
    item's record. The host's pool process is frozen (SIGSTOP) while the records are read,
    so the moment is certain, not a race with a 0.1 s item."""
    pool = wait_for_pool(fleet.workers[host_name], 1)[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(pool, signal.SIGSTOP)
        try:
            running = [item for item in job_state(fleet, job_id)[1]
                       if item["status"] == "running"
                       and (item.get("worker") or "").startswith(f"{host_name}:")]
            if running:
                fault()
                return running[0]
        finally:
            with suppress(ProcessLookupError):  # the fault may have been its death
                os.kill(pool, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"{host_name} ran no item of the job within {timeout:.0f}s")


def wait_finished_quietly(fleet: Fleet, job_id: str, settle: float) -> dict[str, Any]:
    """The finished job's status, once nothing changed for ``settle`` seconds: late writes
    of a host that came back must not move anything after the job finished."""
    wait_finished(fleet.client(), job_id)
    before = job_state(fleet, job_id)
    time.sleep(settle)
    assert_unchanged(fleet, job_id, before)
    return before[0]


def seconds_until(check: Callable[[], bool], limit: float) -> float | None:
    """How long from now until ``check()`` held, if it did within ``limit`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def item_finished(fleet: Fleet, job_id: str, index: int) -> bool:
    item = fleet.store.item(job_id, index)
    return item is not None and item["status"] in TERMINAL


# -- depthfleet predict as the reference ------------------------------------------------------
def predicted_digests(photos: list[Path], out: Path, env: dict[str, str]) -> dict[str, dict]:
    """``depthfleet predict`` of ``photos`` (compact set): input sha256 -> artifact -> sha256."""
    done = subprocess.run([sys.executable, "-m", "depthfleet.cli", "predict", *map(str, photos),
                           "--out", str(out), "--outputs", ",".join(COMPACT)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    by_name = {json.loads(line)["name"]: json.loads(line)
               for line in (out / "manifest.jsonl").read_text().splitlines()}
    digests: dict[str, dict] = {}
    for photo in photos:
        record = by_name[photo.name]
        assert record["status"] == "succeeded", record
        digests[_sha256(photo.read_bytes())] = {
            name: _sha256((out / rel).read_bytes()) for name, rel in record["artifacts"].items()}
    return digests


def assert_matches_predict(fleet: Fleet, job_id: str, predicted: dict[str, dict]) -> None:
    """Every item's one result folder holds the compact set, each file byte for byte what
    ``predict`` wrote for the same photo: nothing half-written, nothing from another photo."""
    for item in all_items(fleet.client(), job_id):
        sha = item["sha256"]
        keys = fleet.objects(f"t/local/results/{sha[:2]}/{sha}/")
        folders = {key.rsplit("/", 1)[0] for key in keys}
        assert len(folders) == 1, (item["name"], keys)
        stored = {}
        for key in keys:
            name = COMPACT_FILES.get(key.rsplit("/", 1)[1])
            if name:
                body = fleet.s3_direct.get_object(Bucket=fleet.bucket, Key=f"df/{key}")["Body"]
                stored[name] = _sha256(body.read())
        assert stored == predicted[sha], (item["name"], stored, predicted[sha])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
