"""``/v1/uploads``: content-addressed uploads, so clients can resume without re-sending bytes.

A client asks which of its files' sha256 digests are missing, ``PUT``s those, then creates a
job naming the digests (``{"uploads": [{"name", "sha256"}]}``). Uploads are per tenant: a
digest only ever refers to the caller's own bytes.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, TypeGuard

from flask import Blueprint
from werkzeug.exceptions import RequestEntityTooLarge

from depthfleet.api import services
from depthfleet.api.bodies import body_chunks, json_body
from depthfleet.api.auth import current_tenant
from depthfleet.shared import ingest, layout
from depthfleet.shared.errors import InputError

bp = Blueprint("uploads", __name__, url_prefix="/v1/uploads")

SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_CHECK = 5000
MAX_FILENAME = 255
IN_MEMORY_BYTES = 8 << 20  # a larger upload goes to storage from its spool file


def valid_digest(digest: object) -> str:
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise InputError("invalid_digest", "sha256 digests are 64 lowercase hex digits")
    return digest


@bp.post("/check")
def check() -> dict[str, list[str]]:
    body = _object_body()
    digests = body.get("sha256")
    if not isinstance(digests, list) or len(digests) > MAX_CHECK:
        raise InputError("invalid_request", f"send {{'sha256': [...]}} with at most {MAX_CHECK}")
    checked = [valid_digest(d) for d in digests]
    known = services.store().known_uploads(current_tenant(), checked)  # no storage lookups
    return {"missing": [d for d in checked if d not in known]}


@bp.post("/presign")
def presign() -> tuple[dict[str, object], int]:
    """A short-lived URL to PUT a large archive straight into storage, bypassing the API.

    Then ``POST /v1/jobs {"keys": [source]}`` names it and a worker expands it.
    """
    filename = _object_body().get("filename")
    if not _plain_name(filename) or not filename.lower().endswith(ingest.ARCHIVE_SUFFIXES):
        raise InputError("invalid_request",
                         f"'filename' must be a plain archive name ending in {ingest.ARCHIVE_SUFFIXES}")
    storage, settings = services.storage(), services.settings()
    key = layout.staging_key(current_tenant(), uuid.uuid4().hex, filename)
    url = storage.presigned_put(key, settings.presign_seconds)
    if url is None:
        raise InputError("presign_unavailable",
                         "this deployment's storage takes uploads through the API only", 501)
    return {"url": url, "method": "PUT", "source": f"{storage.url}/{key}",
            "expires_in": settings.presign_seconds}, 201


@bp.put("/<digest>")
def put(digest: str) -> tuple[dict[str, object], int]:
    valid_digest(digest)
    with tempfile.NamedTemporaryFile(prefix="depthfleet-upload-") as spool:
        size, actual = _receive(spool, services.settings().max_upload_bytes)
        if not size:
            raise InputError("empty_file", "the upload is empty")
        if actual != digest:
            raise InputError("digest_mismatch", f"the body's sha256 is {actual}, not {digest}")
        key = layout.input_key(current_tenant(), digest)
        storage = services.storage()
        repeated = storage.exists(key)
        if not repeated:
            if size <= IN_MEMORY_BYTES:
                spool.seek(0)
                storage.put(key, spool.read())
            else:
                storage.put_file(key, Path(spool.name))
    services.store().count("uploads_repeated" if repeated else "uploads_stored")
    services.store().remember_uploads(current_tenant(), [digest])
    return {"sha256": digest, "size": size, "already_stored": repeated}, 201


def _object_body() -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise InputError("invalid_request", "send a JSON object")
    return body


def _plain_name(name: object) -> TypeGuard[str]:
    """A file name without folders or a leading dot; printable (so no lone surrogates)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_FILENAME and name.isprintable() \
        and not name.startswith(".") and "/" not in name and "\\" not in name


def _receive(spool: IO[bytes], limit: int) -> tuple[int, str]:
    """Copy the body into ``spool``: its size and sha256."""
    digest, size = hashlib.sha256(), 0
    for chunk in body_chunks(limit, RequestEntityTooLarge):
        digest.update(chunk)
        spool.write(chunk)
        size += len(chunk)
    spool.flush()
    return size, digest.hexdigest()
