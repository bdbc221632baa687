"""``depthfleet submit``: send a local folder to a deployment, resumably.

Files are uploaded content-addressed (``PUT /v1/uploads/{sha256}``) in parallel after asking
the server which it already has, and the job is created with an idempotency key saved before
the request. A restarted ``submit`` therefore re-uploads nothing, creates no second job and
picks up the results where it stopped. The requests are ``depthfleet.client.Client``'s; this
module adds what only the command keeps: the hashes and the key across restarts.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from depthfleet.client import ApiError, Client, Job, NothingAccepted, Upload
from depthfleet.outputs import Input, find_inputs
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
    state = SubmitState(state_path(settings, server, inputs))
    uploads = [Upload(inp.name, inp.path, state.digest(inp))
               for inp in tqdm(inputs, desc="hash", unit="file")]
    state.save()
    with Client(server, api_key) as client:
        job = client.job(state.data["job_id"]) if "job_id" in state.data else \
            _create_job(client, state, uploads, options)
        if job is None:
            return 1
        print(f"job {job.id}")
        refused = bool(state.data.get("refused"))  # files left out: never a clean exit
        if not wait:
            return int(refused)
        if out is None:
            final = job.wait(progress=True)
        else:  # options.outputs went to the job only if given; OUT gets them, or the full size
            final = job.download(out, outputs=options.get("outputs", FULL_SIZE),
                                 progress=True).status
    return int(refused or final["status"] != "succeeded")


def _create_job(client: Client, state: SubmitState, uploads: list[Upload],
                options: dict[str, Any]) -> Job | None:
    """Upload, then create the job of what the server accepted (None: it accepted nothing)."""
    try:
        job = client.submit_uploads(uploads, outputs=options.get("outputs"),
                                    max_side=options.get("max_side"),
                                    idempotency_key=state.data["idempotency_key"], progress=True)
    except NothingAccepted as exc:
        _report_refused(exc.refused)
        return None
    _report_refused(job.refused)
    state.data.update(job_id=job.id, refused=len(job.refused))
    state.save()
    return job


def _report_refused(refused: list[tuple[str, ApiError]]) -> None:
    if refused:
        print(f"depthfleet: {len(refused)} files refused by the server, left out of the job:",
              file=sys.stderr)
    for name, exc in refused[:10]:
        print(f"  {name}: {exc.message} ({exc.code})", file=sys.stderr)
