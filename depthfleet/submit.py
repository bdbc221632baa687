"""``depthfleet submit``: send a local folder to a deployment, resumably.

Files are uploaded content-addressed (``PUT /v1/uploads/{sha256}``) in parallel after asking
the server which it already has, and the job is created with an idempotency key saved before
the request. A restarted ``submit`` therefore re-uploads nothing, creates no second job and
picks up the results where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from depthfleet.client import Client
from depthfleet.outputs import Input, OutputFolder, find_inputs
from depthfleet.results import Collector
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
    job_id = state.data.get("job_id")
    if not job_id:
        _upload_missing(client, inputs, digests)
        body = {"uploads": [{"name": i.name, "sha256": d} for i, d in zip(inputs, digests)],
                "options": options}
        job_id = client.submit_json(body, idempotency_key=state.data["idempotency_key"])["id"]
        state.data["job_id"] = job_id
        state.save()
    print(f"job {job_id}")
    if not wait:
        return 0
    if out is None:
        final = client.wait(job_id)
        return 0 if final["status"] == "succeeded" else 1
    collector = Collector(client, job_id, OutputFolder(out), lambda item: item["name"])
    final = collector.run()
    return 0 if final["status"] == "succeeded" else 1


def _upload_missing(client: Client, inputs: list[Input], digests: list[str]) -> None:
    missing = client.missing_uploads(sorted(set(digests)))
    todo, seen = [], set()
    for inp, digest in zip(inputs, digests):
        if digest in missing and digest not in seen:
            todo.append((inp.path, digest))
            seen.add(digest)
    with tqdm(total=len(todo), desc="upload", unit="file") as bar:
        client.upload_many(todo, on_done=lambda _: bar.update(1))
