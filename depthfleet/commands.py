"""What each ``depthfleet`` command does; ``cli`` parses, this module acts.

Each handler takes (args, settings, options) and returns the process exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from depthfleet.shared.settings import Settings

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


SHOWN_FAILURES = 10


def _exit_status(failed: int) -> int:
    return 0 if failed == 0 else 1


def _summary(out: Any, failed: int, failures: list[dict[str, Any]]) -> int:
    """Print where the results are and, in words, why the first few inputs failed."""
    from depthfleet.shared.reasons import in_words

    print(f"depthfleet: results in {out}/ ({failed} failed)", file=sys.stderr)
    _show_failures([(r["name"], in_words(r.get("error"))) for r in failures],
                   f" in {out}/manifest.jsonl")
    return _exit_status(failed)


def _show_failures(failures: list[tuple[str, str]], rest: str = "") -> None:
    """``name: reason`` for the first few, then how many more (and where to find them)."""
    for name, reason in failures[:SHOWN_FAILURES]:
        print(f"  {name}: {reason}", file=sys.stderr)
    if len(failures) > SHOWN_FAILURES:
        print(f"  ... and {len(failures) - SHOWN_FAILURES} more{rest}", file=sys.stderr)


def predict(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.outputs import OutputFolder
    from depthfleet.predict import predict as run_predict

    failed = run_predict(args.paths, args.out, settings, threads=args.threads or _cores(),
                         max_side=options.get("max_side"), outputs=options.get("outputs"),
                         options=options)
    return _summary(args.out, failed, OutputFolder(args.out).failures())


def run(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.client import Client
    from depthfleet.local import local_system
    from depthfleet.outputs import OutputFolder, find_inputs
    from depthfleet.results import Collector, StoredArtifacts
    from depthfleet.shared.artifacts import FULL_SIZE
    from depthfleet.shared.pipeline import prepare_model_files

    source_root = args.dir.resolve()
    inputs = find_inputs([source_root])
    folder = OutputFolder(args.out, [inp.name for inp in inputs])
    todo = [inp for inp in inputs if not folder.is_done(inp.name)]
    print(f"depthfleet: {len(inputs)} images under {args.dir}, {len(inputs) - len(todo)} already "
          f"done", file=sys.stderr)
    if todo:
        workers = args.workers or settings.concurrency or _cores()
        threads = args.threads or settings.threads or max(1, _cores() // workers)
        root_url = source_root.as_uri() + "/"
        # One machine, one run: no fleet metrics server listening on every interface.
        local = settings.with_(tenant_sources={**settings.tenant_sources, "local": (root_url,)},
                               metrics_port=0)
        name_of = {inp.path.resolve().as_uri(): inp.name for inp in todo}
        prepare_model_files(local)  # weights and exported model ready before any worker starts
        with local_system(local, args.out / ".depthfleet", workers, threads) as system:
            with Client(system.api_url) as client:
                # Workers store what OUT gets (full size by default), so it is linked out.
                outputs = options.get("outputs") or list(FULL_SIZE)
                job = client.submit_json({"keys": list(name_of),
                                          "options": {**options, "outputs": outputs}})
                Collector(client, job["id"], folder, lambda item: name_of[item["name"]],
                          stored=StoredArtifacts.open(system.settings), outputs=outputs).run(
                              on_poll=system.check_alive)
    folder.finalize([inp.name for inp in inputs])
    failed = sum(1 for inp in inputs if not folder.is_done(inp.name))
    return _summary(args.out, failed, folder.failures())


def submit(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.submit import submit_paths

    return submit_paths(args.paths, args.server, _api_key(args, settings), settings, options,
                        wait=args.wait, out=args.out)


def status(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.client import Client

    with Client(args.server, _api_key(args, settings)) as client:
        print(json.dumps(client.status(args.job), indent=2))
    return 0


def fetch(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.client import Client
    from depthfleet.outputs import OutputFolder
    from depthfleet.shared.artifacts import FULL_SIZE

    with Client(args.server, _api_key(args, settings)) as client:
        done = client.download_results(args.job, args.out, options.get("outputs", FULL_SIZE),
                                       options.get("max_side"), progress=True)
    return _summary(args.out, done.failed, OutputFolder(args.out).failures())


def render(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    """Full-size files from the depth_raw of each succeeded record; no model loaded."""
    from depthfleet.outputs import MANIFEST
    from depthfleet.render import render_folder
    from depthfleet.shared.artifacts import FULL_SIZE

    if not (args.dir / MANIFEST).is_file():
        print(f"depthfleet: no {MANIFEST} in {args.dir}/ (a folder of predict, run or fetch)",
              file=sys.stderr)
        return 2
    report = render_folder(args.dir, options.get("outputs", FULL_SIZE), options.get("max_side"),
                           threads=args.threads or _cores())
    print(f"depthfleet: {report.rendered} rendered, {report.skipped} already there, "
          f"{len(report.failures)} failed in {args.dir}/", file=sys.stderr)
    _show_failures(report.failures)
    return _exit_status(len(report.failures))


def weights(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    from depthfleet.shared.errors import WeightsError
    from depthfleet.shared.model.weights import resolve_weights

    try:
        found = resolve_weights(settings)
    except WeightsError as exc:
        print(f"depthfleet: {exc.message}", file=sys.stderr)
        return 2
    print(f"path    {found.path}\nsha256  {found.sha256}\nsource  {found.source}")
    return 0


def export_model(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    """Export once (here, with the ``export`` extra) for workers installed without it: the
    file goes into this machine's cache and, with DEPTHFLEET_STORAGE_URL, to the fleet's."""
    from depthfleet.shared.layout import model_key
    from depthfleet.shared.model import published
    from depthfleet.shared.model.onnx_export import exported_onnx
    from depthfleet.shared.model.weights import resolve_weights
    from depthfleet.shared.pipeline import shared_models

    found = resolve_weights(settings)
    shared = shared_models(settings)
    exported = exported_onnx(found, settings.cache_dir, shared)
    if shared is None:
        print(f"{exported}\n(no DEPTHFLEET_STORAGE_URL: in this machine's cache only)")
        return 0
    if not published.is_shared(shared, exported):
        published.upload(shared, exported, found.sha256)
    print(f"{shared.url}/{model_key(exported.name)}")
    return 0


def api(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    """Exec gunicorn, configured by ``depthfleet.api.gunicorn_conf`` (JSON logs, metrics)."""
    from depthfleet.shared.metrics import MULTIPROC_ENV, fresh_metrics_dir

    if not settings.api_keys and args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"depthfleet: refusing to listen on {args.host} without DEPTHFLEET_API_KEYS "
              "(anonymous access is for loopback only)", file=sys.stderr)
        return 2
    os.environ[MULTIPROC_ENV] = fresh_metrics_dir("api")  # gunicorn workers share metrics
    os.execv(sys.executable, [
        sys.executable, "-m", "gunicorn", "--config", "python:depthfleet.api.gunicorn_conf",
        "--bind", f"{args.host}:{args.port}", "--workers", str(args.processes),
        "depthfleet.api:create_app()",
    ])
    return 1  # not reached


def worker(args: argparse.Namespace, settings: Settings, options: dict[str, Any]) -> int:
    """Exec a Celery worker: N pool processes x T threads, pinned through the environment."""
    from depthfleet.shared.metrics import MULTIPROC_ENV, fresh_metrics_dir
    from depthfleet.shared.queue import INGEST_QUEUE, QUEUE

    concurrency = args.concurrency or settings.concurrency or _cores()
    threads = args.threads or settings.threads or max(1, _cores() // concurrency)
    os.environ.update({"DEPTHFLEET_CONCURRENCY": str(concurrency),
                       "DEPTHFLEET_THREADS": str(threads)})
    os.environ.update({name: str(threads) for name in THREAD_ENV})
    os.environ[MULTIPROC_ENV] = fresh_metrics_dir("worker")  # pool processes share metrics
    os.execv(sys.executable, [
        sys.executable, "-m", "celery", "-A", "depthfleet.worker.app", "--quiet", "worker",
        "--concurrency", str(concurrency), "--pool", "prefork", "--queues", f"{QUEUE},{INGEST_QUEUE}",
        "--hostname", f"worker-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
        "--loglevel", settings.log_level,
    ])
    return 1  # not reached


def _api_key(args: argparse.Namespace, settings: Settings) -> str | None:
    return args.api_key or settings.client_api_key
