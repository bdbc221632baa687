"""The fair share: a lone tenant's speed, the next one's wait (``python -m bench.fairness``).

alice alone submits ``--photos`` distinct small photos (default 2,000) in one job to one
worker of 2 pool processes; measured is her end-to-end rate: images over the seconds from her
``POST /v1/jobs`` to the job's last item finished. Every round measures both settings of
``DEPTHFLEET_TENANT_WINDOW`` on fresh processes, a fresh Redis and fresh storage (no result
of an earlier run to reuse): ``off`` (every task in the broker at once, first in first out:
the behaviour before the fair share) and ``auto`` (a window of about two tasks per pool
process per tenant), the order alternating from round to round so neither always runs first
on a machine whose other load drifts. Printed: each round, best-of and median per setting,
and auto / off against the acceptance threshold (>= 0.95).

In every run bob, a second API key, submits one photo once ``--bob-after`` of alice's items
(default 10 %) finished; his latency, submit to succeeded, is printed for both settings.

Photos (``--kind``): ``tiny`` (default), 64x48 JPEG crops of a real photo, each distinct
(``bench.load.small_photos``), so the per-task costs the fair share adds weigh as much as
they ever can against the work per photo; or ``small``, the JPEG and PNG photos of
``bench.workloads`` (64 px to 2 MP, each copy's bytes distinct), which write ~2.5 MB of
artifacts per photo and take minutes per run on 2 cores. Photos are named by ``keys`` in
each tenant's own folder of a ``file://`` storage, so uploads are not what is measured.

Not part of CI. Starts its own Redis (the ``redis-server`` ``depthfleet run`` uses), API and
worker per run; makes the stand-in checkpoint ``bench.run`` uses.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import workloads
from bench.load import small_photos
from bench.procs import load_average
from bench.run import checkpoint, command_env
from depthfleet.client import Client
from depthfleet.local import _spawn, free_port, start_redis, stop_together, wait_until
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.pipeline import prepare_model_files
from depthfleet.shared.queue import fair_share
from depthfleet.shared.settings import Settings

POOL = 2
SETTINGS = ("off", "auto")
THRESHOLD = 0.95
KEYS = {"alice": "bench-alice", "bob": "bench-bob"}
POLL_SECONDS = 0.1
RUN_TIMEOUT = 3600.0


@dataclass
class Run:
    """One measurement: a setting, alice's rate, bob's latency."""

    window: str
    images: int
    seconds: float
    bob_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


# -- photos ----------------------------------------------------------------------------------
def make_photos(folder: Path, kind: str, count: int) -> list[Path]:
    """``count`` photos of distinct bytes in ``folder``, in submission order."""
    if kind == "small":
        written = workloads.make_small(folder, math.ceil(count / len(workloads.small_photos())))
        return written[:count]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(small_photos(count)):
        path = folder / f"tiny-{index:06d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def link_into(paths: list[Path], folder: Path) -> list[Path]:
    """Hard links of ``paths`` in ``folder`` (a tenant's storage folder of one run)."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for path in paths:
        os.link(path, folder / path.name)
        linked.append(folder / path.name)
    return linked


def keys(paths: list[Path]) -> dict[str, list[str]]:
    return {"keys": [path.as_uri() for path in paths]}


# -- one run ---------------------------------------------------------------------------------
def start(stack: ExitStack, root: Path, env: dict[str, str]) -> str:
    """Redis, one worker of ``POOL`` warm processes that has joined the fleet, and the API."""
    redis_url, redis_proc = start_redis(root / "redis")
    stack.callback(stop_together, [redis_proc])
    env = {**env, "DEPTHFLEET_REDIS_URL": redis_url}
    metrics, port = free_port(), free_port()
    worker = _spawn([sys.executable, "-m", "depthfleet.cli", "worker", "--concurrency",
                     str(POOL)], {**env, "DEPTHFLEET_METRICS_PORT": str(metrics)},
                    root / "worker.log")
    api = _spawn([sys.executable, "-m", "depthfleet.cli", "api", "--port", str(port)], env,
                 root / "api.log")
    stack.callback(stop_together, [api, worker])
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "API", 120, api)
    wait_until(lambda: requests.get(f"http://127.0.0.1:{metrics}/readyz", timeout=2).json()
               ["pool_processes"] == POOL, "worker pool", 180, worker)
    store = JobStore(connect(redis_url), 86400)
    settings = Settings.from_env(env)
    wait_until(lambda: fair_share(store, settings).live_processes() >= POOL, "fleet heartbeat",
               60, worker)
    return url


def measure(window: str, photos: list[Path], bob_photo: Path, bob_after: float,
            scratch: Path, env: dict[str, str]) -> Run:
    """alice's job on fresh processes with this window; bob's one photo part-way through."""
    root = Path(tempfile.mkdtemp(prefix=f"run-{window}-", dir=scratch))
    storage = root / "storage"
    env = {**env, "DEPTHFLEET_TENANT_WINDOW": window, "DEPTHFLEET_STORAGE_URL": storage.as_uri()}
    try:
        with ExitStack() as stack:
            url = start(stack, root, env)
            alice_photos = link_into(photos, storage / "t" / "alice" / "photos")
            bob_keys = keys(link_into([bob_photo], storage / "t" / "bob" / "in"))
            alice, bob = Client(url, KEYS["alice"]), Client(url, KEYS["bob"])
            started = time.monotonic()
            alice_job = alice.submit_json(keys(alice_photos))["id"]
            bob_job, bob_sent, bob_done, alice_done = None, 0.0, None, None
            while alice_done is None or bob_done is None:
                now = time.monotonic()
                if now - started > RUN_TIMEOUT:
                    raise TimeoutError(f"window {window}: not finished in {RUN_TIMEOUT:.0f} s")
                if alice_done is None:
                    status = alice.status(alice_job)
                    if status["pending"] == 0:
                        alice_done = time.monotonic()
                    if bob_job is None and (alice_done is not None or status["total"]
                                            - status["pending"] >= bob_after * len(photos)):
                        bob_sent = time.monotonic()
                        bob_job = bob.submit_json(bob_keys)["id"]
                if bob_job is not None and bob_done is None and \
                        bob.status(bob_job)["status"] == "succeeded":
                    bob_done = time.monotonic()
                time.sleep(POLL_SECONDS)
            final = alice.status(alice_job)
            if final["succeeded"] != len(photos):
                raise RuntimeError(f"window {window}: alice's job ended {final}")
            return Run(window, len(photos), alice_done - started, bob_done - bob_sent)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the report ------------------------------------------------------------------------------
def table(runs: list[Run], rounds: int, args: argparse.Namespace, load: tuple[float, float],
          seconds: float) -> str:
    by = {w: [r for r in runs if r.window == w] for w in SETTINGS}
    rates = {w: [r.images_per_s for r in by[w]] for w in SETTINGS}
    bob = {w: [r.bob_seconds for r in by[w]] for w in SETTINGS}
    label = {"off": "window off (first in, first out)", "auto": "window auto (fair share)"}
    heads = "".join(f"  round {i + 1}" for i in range(rounds))
    lines = [
        f"DepthFleet fair share bench {time.strftime('%Y-%m-%dT%H:%M:%S')}, {seconds:.0f} s; "
        f"{len(os.sched_getaffinity(0))} cores; load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after",
        f"alice alone: {args.photos} {args.kind} photos in one job, 1 worker x {POOL} "
        f"processes, {args.items_per_task} items per task; bob: 1 photo once "
        f"{args.bob_after:.0%} of alice's were done; order by round: "
        + ", ".join("/".join(round_order(i)) for i in range(rounds)),
        "",
        f"alice, end to end (img/s)          {heads}     best   median",
    ]
    for w in SETTINGS:
        cells = "".join(f"{v:9.2f}" for v in rates[w])
        lines.append(f"  {label[w]:<33}{cells}  {max(rates[w]):7.2f}  "
                     f"{statistics.median(rates[w]):7.2f}")
    best = max(rates["auto"]) / max(rates["off"])
    median = statistics.median(rates["auto"]) / statistics.median(rates["off"])
    verdict = "met" if best >= THRESHOLD else "NOT met"
    lines += [f"  auto / off: best-of {best:.3f}, median {median:.3f}; "
              f"threshold >= {THRESHOLD:.2f} (best-of): {verdict}",
              "",
              f"bob, submit to succeeded (s)       {heads}     best   median"]
    for w in SETTINGS:
        cells = "".join(f"{v:9.2f}" for v in bob[w])
        lines.append(f"  {label[w]:<33}{cells}  {min(bob[w]):7.2f}  "
                     f"{statistics.median(bob[w]):7.2f}")
    slower = statistics.median(bob["off"]) / statistics.median(bob["auto"])
    lines.append(f"  off / auto (median): {slower:.1f}x")
    return "\n".join(lines)


def round_order(round_number: int) -> tuple[str, ...]:
    return SETTINGS if round_number % 2 == 0 else SETTINGS[::-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000, help="alice's photos (default 2000)")
    parser.add_argument("--kind", choices=("tiny", "small"), default="tiny",
                        help="tiny: 64x48 JPEGs (default); small: bench.workloads' small photos")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of off and auto (default 3)")
    parser.add_argument("--bob-after", type=float, default=0.1,
                        help="bob submits once this share of alice's items is done (default 0.1)")
    parser.add_argument("--items-per-task", type=int, default=8,
                        help="DEPTHFLEET_ITEMS_PER_TASK (default 8, the fleet default)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "depthfleet-bench")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, load_before = time.monotonic(), load_average()
    settings = Settings(weights=str(checkpoint(args.cache)), cache_dir=args.cache / "models")
    prepare_model_files(settings)  # warm: the ONNX export is not what is measured
    env = command_env(settings, {
        "DEPTHFLEET_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "DEPTHFLEET_ITEMS_PER_TASK": str(args.items_per_task),
        "DEPTHFLEET_MAX_UPLOAD_MB": "256"})  # a JSON body of many keys
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="depthfleet-fairness-") as tmp:
        scratch = Path(tmp)
        print(f"fairness: making {args.photos} {args.kind} photos ...", file=sys.stderr, flush=True)
        photos = make_photos(scratch / "photos", args.kind, args.photos + args.rounds * 2)
        alice_photos, bob_photos = photos[:args.photos], photos[args.photos:]
        for round_number in range(args.rounds):
            for window in round_order(round_number):
                print(f"fairness: round {round_number + 1}, window {window} ...", file=sys.stderr,
                      flush=True)
                run = measure(window, alice_photos, bob_photos[len(runs)], args.bob_after,
                              scratch, env)
                print(f"  {run.images_per_s:.2f} img/s, bob {run.bob_seconds:.2f} s",
                      file=sys.stderr, flush=True)
                runs.append(run)
    print(table(runs, args.rounds, args, (load_before, load_average()),
                time.monotonic() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
