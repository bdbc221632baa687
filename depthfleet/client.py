"""A small HTTP client for a DepthFleet deployment, used by ``submit``, ``status``, ``fetch``, ``run``.

Transient failures (connection refused while the API restarts, 502/503/504, 429 with
``Retry-After``) are retried with backoff; every request is safe to repeat because uploads
are content-addressed and job creation carries an idempotency key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

TERMINAL_JOB_STATES = ("succeeded", "failed", "partial", "cancelled")


class ApiError(RuntimeError):
    """The API answered with an error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
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

    # -- jobs ---------------------------------------------------------------------------
    def submit_files(self, paths: list[Path], options: dict[str, Any] | None = None,
                     idempotency_key: str | None = None) -> dict:
        """One multipart request with every file (images or archives), under an
        Idempotency-Key (see ``submit_json``)."""
        files = [("file", (p.name, p.read_bytes())) for p in paths]
        data = {"options": _json(options)} if options else None
        return self._request("POST", "/v1/jobs", files=files, data=data,
                             headers=_idempotency(idempotency_key)).json()

    def submit_json(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict:
        """Create a job. The request always carries an Idempotency-Key (a new one unless
        given), so that our own retry of a request whose answer was lost (the API restarted
        mid-submit) gets the job it created back, never a second job."""
        return self._request("POST", "/v1/jobs", json=body,
                             headers=_idempotency(idempotency_key)).json()

    def status(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def items(self, job_id: str, offset: int = 0, limit: int = 1000) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}/items",
                             params={"offset": offset, "limit": limit}).json()

    def iter_items(self, job_id: str) -> Iterator[dict]:
        page: str | None = f"/v1/jobs/{job_id}/items?offset=0&limit=1000"
        while page:
            body = self._request("GET", page).json()
            yield from body["items"]
            page = body["next"]

    def cancel(self, job_id: str) -> dict:
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    def download(self, url: str) -> bytes:
        return self._request("GET", url).content

    def wait(self, job_id: str, interval: float = 1.0,
             on_update: Any = None) -> dict:
        """Poll until the job is finished; ``on_update(status)`` after each poll."""
        while True:
            status = self.status(job_id)
            if on_update:
                on_update(status)
            if status["status"] in TERMINAL_JOB_STATES and status["pending"] == 0:
                return status
            time.sleep(interval)

    # -- content-addressed uploads ------------------------------------------------------
    def missing_uploads(self, digests: list[str]) -> set[str]:
        missing: set[str] = set()
        for start in range(0, len(digests), 5000):
            body = {"sha256": digests[start:start + 5000]}
            missing.update(self._request("POST", "/v1/uploads/check", json=body).json()["missing"])
        return missing

    def upload(self, path: Path, digest: str) -> None:
        with path.open("rb") as fh:
            self._request("PUT", f"/v1/uploads/{digest}", data=fh,
                          headers={"Content-Type": "application/octet-stream"})

    def upload_many(self, files: list[tuple[Path, str]], workers: int = 8,
                    on_done: Any = None, upload: Any = None) -> None:
        """Upload in parallel (with ``upload(path, digest)``, default ``self.upload``);
        ``on_done(path)`` after each file."""
        upload = upload or self.upload

        def one(item: tuple[Path, str]) -> Path:
            upload(*item)
            return item[0]

        with ThreadPoolExecutor(workers) as pool:
            for path in pool.map(one, files):
                if on_done:
                    on_done(path)


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
