"""``/v1/uploads``: content-addressed uploads, so clients can resume without re-sending bytes.

A client asks which of its files' sha256 digests are missing, ``PUT``s those, then creates a
job naming the digests (``{"uploads": [{"name", "sha256"}]}``). Uploads are per tenant: a
digest only ever refers to the caller's own bytes.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from flask import Blueprint, request

from depthfleet.api import services
from depthfleet.api.auth import current_tenant
from depthfleet.shared import ingest, layout
from depthfleet.shared.errors import InputError

bp = Blueprint("uploads", __name__, url_prefix="/v1/uploads")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_CHECK = 5000


def valid_digest(digest: object) -> str:
    if not isinstance(digest, str) or not SHA256.match(digest):
        raise InputError("invalid_digest", "sha256 digests are 64 lowercase hex digits")
    return digest


@bp.post("/check")
def check() -> dict[str, list[str]]:
    body = request.get_json(silent=True) or {}
    digests = body.get("sha256")
    if not isinstance(digests, list) or len(digests) > MAX_CHECK:
        raise InputError("invalid_request", f"send {{'sha256': [...]}} with at most {MAX_CHECK}")
    storage, tenant = services.storage(), current_tenant()
    missing = [d for d in map(valid_digest, digests)
               if not storage.exists(layout.input_key(tenant, d))]
    return {"missing": missing}


@bp.post("/presign")
def presign() -> tuple[dict[str, object], int]:
    """A short-lived URL to PUT a large archive straight into storage, bypassing the API.

    Then ``POST /v1/jobs {"keys": [source]}`` names it and a worker expands it.
    """
    body = request.get_json(silent=True) or {}
    filename = body.get("filename")
    if not isinstance(filename, str) or not filename.lower().endswith(ingest.ARCHIVE_SUFFIXES) \
            or "/" in filename or filename.startswith("."):
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
    data = request.get_data(cache=False)
    if not data:
        raise InputError("empty_file", "the upload is empty")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise InputError("digest_mismatch", f"the body's sha256 is {actual}, not {digest}")
    key = layout.input_key(current_tenant(), digest)
    storage = services.storage()
    repeated = storage.exists(key)
    if not repeated:
        storage.put(key, data)
    services.store().count("uploads_repeated" if repeated else "uploads_stored")
    return {"sha256": digest, "size": len(data), "already_stored": repeated}, 201
