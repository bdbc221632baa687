"""The Python client of a DepthFleet deployment: what ``depthfleet submit``, ``status`` and
``fetch`` are built on, and what a script or notebook uses::

    from depthfleet.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit(["photos/", "extra.jpg"], progress=True)
        job.wait(progress=True)
        for item in job.items():
            print(item["name"], item["status"], item["error"])
        job.download("depth/", progress=True)  # the layout of `depthfleet fetch JOB --out depth/`

Photos go up content-addressed (``PUT /v1/uploads/{sha256}``, only what the server lacks) and
the job is created with an idempotency key, so every request is safe to repeat. Transient
failures (connection refused while the API restarts, 502/503/504, 429 with ``Retry-After``)
are retried with backoff. Answers are the API's JSON as dicts (``JobInfo``, ``ItemInfo``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Union

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from depthfleet.outputs import OutputFolder, find_inputs
from depthfleet.shared.artifacts import FULL_SIZE
from depthfleet.shared.digests import sha256_file

TERMINAL_JOB_STATES = ("succeeded", "failed", "partial", "cancelled")
CHECK_BATCH = 5000  # digests per POST /v1/uploads/check (the API's limit)
PAGE = 1000  # items per GET /v1/jobs/{id}/items (the API's limit)
# Near the end of a job, poll this often: the last photos finish within a fraction of the
# normal interval, and a user (or a bench) should not wait up to a whole interval more.
TAIL_PENDING, TAIL_INTERVAL = 4, 0.05


class JobInfo(TypedDict):
    """A job's status, as ``GET /v1/jobs/{id}`` answers (``Job`` in /v1/openapi.json)."""

    id: str
    status: str  # queued, running, succeeded, partial, failed, cancelled
    total: int
    succeeded: int
    failed: int
    pending: int
    cancelled: int
    reused: int
    ingesting: bool  # a worker is still expanding archives or a prefix into items
    progress: float
    options: dict[str, Any]
    created_at: str
    updated_at: str
    links: dict[str, str]


class ItemInfo(TypedDict):
    """One input of a job (``Item`` in /v1/openapi.json); ``artifacts`` maps names to URLs."""

    index: int
    name: str
    raw_name: str | None
    status: str  # queued, running, succeeded, failed, cancelled
    width: int | None
    height: int | None
    error: dict[str, str] | None  # {"code", "message"} of a failed item
    depth_min: float | None
    depth_max: float | None
    artifacts: dict[str, str]
    sha256: str | None
    reused: bool
    retryable: bool


class ApiError(RuntimeError):
    """The API answered with an error body: ``status``, machine-readable ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class NothingAccepted(RuntimeError):
    """The server refused every file of a submit, so no job was created."""

    def __init__(self, refused: list[tuple[str, ApiError]]) -> None:
        super().__init__(f"the server refused all {len(refused)} files")
        self.refused = refused


@dataclass(frozen=True)
class Upload:
    """One input of a submit: its name in the job, its bytes (a file or in memory), their sha256."""

    name: str
    data: Path | bytes = field(repr=False)
    sha256: str

    @classmethod
    def of_bytes(cls, name: str, data: bytes) -> Upload:
        return cls(name, data, hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: Path, name: str | None = None) -> Upload:
        return cls(name or path.name, path, sha256_file(path))


# What ``Client.submit`` takes: a file or folder, a photo's bytes, or several of either.
Entry = Union[str, os.PathLike[str], tuple[str, bytes]]
Inputs = Union[str, os.PathLike[str], bytes, Mapping[str, bytes], Iterable[Entry]]


def uploads_of(inputs: Inputs) -> list[Upload]:
    """Files are named as given, folders contribute their images by relative path (as
    ``depthfleet submit`` finds them); bytes come as ``(name, bytes)`` or ``{name: bytes}``."""
    entries: Iterable[Entry]
    if isinstance(inputs, bytes):
        entries = [("upload", inputs)]
    elif isinstance(inputs, (str, os.PathLike)):
        entries = [inputs]
    elif isinstance(inputs, Mapping):
        entries = list(inputs.items())
    else:
        entries = inputs
    uploads: list[Upload] = []
    for entry in entries:
        if isinstance(entry, tuple):
            uploads.append(Upload.of_bytes(*entry))
        else:
            uploads.extend(Upload.of_file(i.path, i.name) for i in find_inputs([Path(entry)]))
    return uploads


def _options(outputs: Sequence[str] | None, max_side: int | None) -> dict[str, Any]:
    """The job's ``options``: artifacts to store besides the compact set, and the size cap."""
    options: dict[str, Any] = {}
    if outputs:
        options["outputs"] = list(outputs)
    if max_side is not None:
        options["max_side"] = max_side
    return options


def finished(status: JobInfo) -> bool:
    """No item will change any more (archives and prefixes are expanded, nothing pending)."""
    return status["status"] in TERMINAL_JOB_STATES and status["pending"] == 0


class Client:
    """One deployment, one API key; a context manager that closes its connections."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 120) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        retry = Retry(total=12, connect=12, read=3, backoff_factor=0.5, backoff_max=20,
                      status_forcelist=(429, 502, 503, 504), respect_retry_after_header=True,
                      allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        # An idle keep-alive connection holds a gunicorn thread worker for its keep-alive
        # timeout at shutdown: closing ours lets a local API stop at once instead of in 2 s.
        self.session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.server}{path}"
        response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200]}
            raise ApiError(response.status_code, error.get("code", "?"), error.get("message", ""))
        return response

    # -- submitting ---------------------------------------------------------------------
    def submit(self, inputs: Inputs, *, outputs: Sequence[str] | None = None,
               max_side: int | None = None, progress: bool = False) -> Job:
        """Upload photos (paths of files or folders, or bytes; see ``uploads_of``) and create
        their job. ``outputs`` names artifacts to store besides the compact set (the API
        renders full-size ones on read anyway); ``max_side`` caps the full-size artifacts."""
        return self.submit_uploads(uploads_of(inputs), outputs=outputs, max_side=max_side,
                                   progress=progress)

    def submit_uploads(self, uploads: Sequence[Upload], *, outputs: Sequence[str] | None = None,
                       max_side: int | None = None, idempotency_key: str | None = None,
                       progress: bool = False, workers: int = 8) -> Job:
        """Upload what the server lacks, in parallel, then create the job.

        Files the server refuses (an empty or oversized one, say) stay out of the job and
        are listed in ``Job.refused``; ``NothingAccepted`` if it refused them all. The same
        ``idempotency_key`` (kept by the caller across restarts) never makes a second job.
        """
        refused = self._upload_missing(uploads, progress, workers)
        kept = [u for u in uploads if u.sha256 not in refused]
        refusals = [(u.name, refused[u.sha256]) for u in uploads if u.sha256 in refused]
        if not kept:
            raise NothingAccepted(refusals)
        body = {"uploads": [{"name": u.name, "sha256": u.sha256} for u in kept],
                "options": _options(outputs, max_side)}
        return Job(self, self.submit_json(body, idempotency_key), refusals)

    def submit_keys(self, keys: Sequence[str], *, outputs: Sequence[str] | None = None,
                    max_side: int | None = None) -> Job:
        """A job of objects already in storage (``s3://bucket/key`` URLs under the tenant's
        allowed prefixes); archives among them are expanded by a worker."""
        return Job(self, self.submit_json({"keys": list(keys),
                                           "options": _options(outputs, max_side)}))

    def submit_source(self, prefix: str, *, outputs: Sequence[str] | None = None,
                      max_side: int | None = None) -> Job:
        """A job of every object under an ``s3://bucket/prefix/``, listed by a worker."""
        return Job(self, self.submit_json({"source": prefix,
                                           "options": _options(outputs, max_side)}))

    def submit_files(self, paths: list[Path], options: dict[str, Any] | None = None,
                     idempotency_key: str | None = None) -> JobInfo:
        """One multipart request with every file (images or archives, sent whole), under an
        Idempotency-Key like ``submit_json``."""
        files = [("file", (p.name, p.read_bytes())) for p in paths]
        data = {"options": json.dumps(options)} if options else None
        return self._request("POST", "/v1/jobs", files=files, data=data,
                             headers=_idempotency(idempotency_key)).json()

    def submit_json(self, body: dict[str, Any], idempotency_key: str | None = None) -> JobInfo:
        """``POST /v1/jobs`` with a JSON body. Always idempotent: a retried request (the
        connection dropped before the answer, say) returns the job the first one made."""
        return self._request("POST", "/v1/jobs", json=body,
                             headers=_idempotency(idempotency_key)).json()

    # -- following a job ----------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        """A handle on an existing job (its status fetched now)."""
        return Job(self, self.status(job_id))

    def status(self, job_id: str) -> JobInfo:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def items(self, job_id: str, offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
        """One page: ``{"items": [ItemInfo...], "total", "next"}``."""
        return self._request("GET", f"/v1/jobs/{job_id}/items",
                             params={"offset": offset, "limit": limit}).json()

    def iter_items(self, job_id: str) -> Iterator[ItemInfo]:
        """Every item in input order, a page at a time."""
        page: str | None = f"/v1/jobs/{job_id}/items?offset=0&limit={PAGE}"
        while page:
            body = self._request("GET", page).json()
            yield from body["items"]
            page = body["next"]

    def cancel(self, job_id: str) -> JobInfo:
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    def download(self, url: str) -> bytes:
        """The bytes at an artifact URL of an item (redirects to storage are followed)."""
        return self._request("GET", url).content

    def watch(self, job_id: str, interval: float = 1.0) -> Iterator[JobInfo]:
        """The job's status after each poll, until it is finished (the last one yielded)."""
        while True:
            status = self.status(job_id)
            yield status
            if finished(status):
                return
            time.sleep(interval if status["pending"] > TAIL_PENDING else TAIL_INTERVAL)

    def wait(self, job_id: str, interval: float = 1.0,
             on_update: Callable[[JobInfo], None] | None = None, progress: bool = False,
             timeout: float | None = None) -> JobInfo:
        """Poll until the job is finished; returns its final status.

        ``on_update(status)`` runs after each poll; ``progress`` shows a bar of finished
        items. ``TimeoutError`` after ``timeout`` seconds (the job goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(desc="depth", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for status in self.watch(job_id, interval):
                bar.total = status["total"]
                bar.update(status["total"] - status["pending"] - bar.n)
                bar.set_postfix(failed=status["failed"])
                if on_update:
                    on_update(status)
                if finished(status):
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
        raise AssertionError("watch() ends with a finished status")  # not reached

    def download_results(self, job_id: str, folder: str | os.PathLike[str],
                         outputs: Sequence[str] = FULL_SIZE, max_side: int | None = None,
                         progress: bool = False) -> Downloaded:
        """Write the job's artifacts into ``folder`` as items finish, named like every
        output folder of the CLI (``<name minus extension>.depth.png``, ...) with a
        ``manifest.jsonl`` line per item; waits for the job. Resumable: run it again on the
        same folder and it skips what is there."""
        from depthfleet.results import Collector  # which builds on this module

        out = OutputFolder(Path(folder))
        collector = Collector(self, job_id, out, lambda item: item["name"], outputs=outputs,
                              max_side=max_side)
        status = collector.run(desc="fetch", progress=progress)
        return Downloaded(status, out.root, collector.failed)

    # -- content-addressed uploads ------------------------------------------------------
    def missing_uploads(self, digests: list[str]) -> set[str]:
        """Which of these sha256 digests this API key has not uploaded yet."""
        missing: set[str] = set()
        for start in range(0, len(digests), CHECK_BATCH):
            body = {"sha256": digests[start:start + CHECK_BATCH]}
            missing.update(self._request("POST", "/v1/uploads/check", json=body).json()["missing"])
        return missing

    def upload(self, data: Path | bytes, digest: str) -> None:
        """``PUT /v1/uploads/{digest}`` of a file (streamed) or bytes."""
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, bytes):
            self._request("PUT", f"/v1/uploads/{digest}", data=data, headers=headers)
            return
        with data.open("rb") as fh:
            self._request("PUT", f"/v1/uploads/{digest}", data=fh, headers=headers)

    def upload_many(self, files: Sequence[tuple[Path | bytes, str]], workers: int = 8,
                    on_done: Callable[[Path | bytes], object] | None = None,
                    upload: Callable[[Path | bytes, str], None] | None = None) -> None:
        """Upload ``(data, digest)`` pairs in parallel (with ``upload``, default
        ``self.upload``); ``on_done(data)`` after each."""
        send = upload or self.upload

        def one(item: tuple[Path | bytes, str]) -> Path | bytes:
            send(*item)
            return item[0]

        with ThreadPoolExecutor(workers) as pool:
            for data in pool.map(one, files):
                if on_done:
                    on_done(data)

    def _upload_missing(self, uploads: Sequence[Upload], progress: bool,
                        workers: int) -> dict[str, ApiError]:
        """Upload what the server lacks, each digest once; returns the refused ones by
        digest: a file's own 4xx leaves it out instead of stopping the whole submit."""
        missing = self.missing_uploads(sorted({u.sha256 for u in uploads}))
        todo = list({u.sha256: u.data for u in uploads if u.sha256 in missing}.items())
        refused: dict[str, ApiError] = {}

        def upload(data: Path | bytes, digest: str) -> None:
            try:
                self.upload(data, digest)
            except ApiError as exc:
                if exc.status >= 500 or exc.status in (401, 403, 429):
                    raise  # the server or the key, not the file: nothing else would get through
                refused[digest] = exc

        with tqdm(total=len(todo), desc="upload", unit="file", disable=not progress) as bar:
            self.upload_many([(data, digest) for digest, data in todo], workers,
                             on_done=lambda _: bar.update(1), upload=upload)
        return refused


def _idempotency(key: str | None) -> dict[str, str]:
    """The header that makes a job creation safe to repeat: the caller's key, else a new one."""
    return {"Idempotency-Key": key or uuid.uuid4().hex}


@dataclass(frozen=True)
class Downloaded:
    """What ``download_results`` left: the job's final status, the folder, and how many
    items it wrote as failed or cancelled (their reasons are in ``manifest.jsonl``)."""

    status: JobInfo
    folder: Path
    failed: int


@dataclass
class Job:
    """A handle on one job: ``info`` is its status as last fetched."""

    client: Client
    info: JobInfo
    refused: list[tuple[str, ApiError]] = field(default_factory=list)  # left out at submit

    @property
    def id(self) -> str:
        return self.info["id"]

    def __repr__(self) -> str:
        i = self.info
        return (f"<Job {i['id']} {i['status']}: {i['succeeded']} succeeded, {i['failed']} "
                f"failed, {i['pending']} pending of {i['total']}>")

    def refresh(self) -> JobInfo:
        self.info = self.client.status(self.id)
        return self.info

    def wait(self, interval: float = 1.0, on_update: Callable[[JobInfo], None] | None = None,
             progress: bool = False, timeout: float | None = None) -> JobInfo:
        """See ``Client.wait``."""
        self.info = self.client.wait(self.id, interval, on_update, progress, timeout)
        return self.info

    def items(self) -> Iterator[ItemInfo]:
        """Every item in input order."""
        return self.client.iter_items(self.id)

    def download(self, folder: str | os.PathLike[str], outputs: Sequence[str] = FULL_SIZE,
                 max_side: int | None = None, progress: bool = False) -> Downloaded:
        """See ``Client.download_results``."""
        done = self.client.download_results(self.id, folder, outputs, max_side, progress)
        self.info = done.status
        return done

    def cancel(self) -> JobInfo:
        self.info = self.client.cancel(self.id)
        return self.info
