"""``depthfleet submit``: send a local folder to a deployment, resumably.

Files are uploaded content-addressed (``PUT /v1/uploads/{sha256}``) in parallel after asking
the server which it already has, and the job is created with an idempotency key saved before
the request. A restarted ``submit`` therefore re-uploads nothing, creates no second job and
picks up the results where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from depthfleet.client import ApiError, Client
from depthfleet.outputs import Input, OutputFolder, find_inputs
from depthfleet.results import Collector
from depthfleet.shared.artifacts import FULL_SIZE
from depthfleet.shared.settings import Settings
from depthfleet.shared.digests import sha256_file


class SubmitState:
    """What a submit remembers across restarts: file hashes, idempotency key, job id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("hashes", {})
        self.data.setdefault("idempotency_key", uuid.uuid4().hex)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def digest(self, inp: Input) -> str:
        stat = inp.path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        cached = self.data["hashes"].get(str(inp.path))
        if cached and cached[0] == stamp:
            return cached[1]
        digest = sha256_file(inp.path)
        self.data["hashes"][str(inp.path)] = [stamp, digest]
        return digest


def state_path(settings: Settings, server: str, inputs: list[Input]) -> Path:
    fingerprint = hashlib.sha256(
        json.dumps([server, [str(i.path.resolve()) for i in inputs]]).encode()).hexdigest()
    return settings.cache_dir / "submits" / f"{fingerprint[:32]}.json"


def submit_paths(paths: list[Path], server: str, api_key: str | None, settings: Settings,
                 options: dict[str, Any], wait: bool, out: Path | None) -> int:
    inputs = find_inputs(paths)
    client = Client(server, api_key)
    state = SubmitState(state_path(settings, server, inputs))
    digests = [state.digest(inp) for inp in tqdm(inputs, desc="hash", unit="file")]
    state.save()
    job_id = state.data.get("job_id") or _create_job(client, state, inputs, digests, options)
    if job_id is None:
        return 1
    print(f"job {job_id}")
    refused = bool(state.data.get("refused"))  # files left out: never a clean exit
    if not wait:
        return int(refused)
    if out is None:
        final = client.wait(job_id)
    else:  # options.outputs went to the job only if given; OUT gets them, or the full size
        final = Collector(client, job_id, OutputFolder(out), lambda item: item["name"],
                          outputs=options.get("outputs", FULL_SIZE)).run()
    return int(refused or final["status"] != "succeeded")


def _create_job(client: Client, state: SubmitState, inputs: list[Input], digests: list[str],
                options: dict[str, Any]) -> str | None:
    """Upload, then create the job of what the server accepted (None: it accepted nothing)."""
    refused = _upload_missing(client, inputs, digests)
    _report_refused(inputs, digests, refused)
    kept = [(i, d) for i, d in zip(inputs, digests) if d not in refused]
    state.data["refused"] = len(inputs) - len(kept)
    if not kept:
        return None
    body = {"uploads": [{"name": i.name, "sha256": d} for i, d in kept], "options": options}
    job_id = client.submit_json(body, idempotency_key=state.data["idempotency_key"])["id"]
    state.data["job_id"] = job_id
    state.save()
    return job_id


def _upload_missing(client: Client, inputs: list[Input], digests: list[str]) -> dict[str, ApiError]:
    """Upload what the server lacks; returns the files it refused (an empty or oversized file,
    say), by digest: they stay out of the job instead of stopping the whole submit."""
    missing = client.missing_uploads(sorted(set(digests)))
    todo, seen = [], set()
    for inp, digest in zip(inputs, digests):
        if digest in missing and digest not in seen:
            todo.append((inp.path, digest))
            seen.add(digest)
    refused: dict[str, ApiError] = {}

    def upload(path: Path, digest: str) -> None:
        try:
            client.upload(path, digest)
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (401, 403, 429):
                raise  # the server or the key, not the file: nothing else would get through
            refused[digest] = exc

    with tqdm(total=len(todo), desc="upload", unit="file") as bar:
        client.upload_many(todo, on_done=lambda _: bar.update(1), upload=upload)
    return refused


def _report_refused(inputs: list[Input], digests: list[str], refused: dict[str, ApiError]) -> None:
    names = [(inp.name, refused[d]) for inp, d in zip(inputs, digests) if d in refused]
    if names:
        print(f"depthfleet: {len(names)} files refused by the server, left out of the job:",
              file=sys.stderr)
    for name, exc in names[:10]:
        print(f"  {name}: {exc.message} ({exc.code})", file=sys.stderr)
