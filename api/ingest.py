"""Turning a ``POST /v1/jobs`` request into stored inputs and job items.

Every input is sniffed by content (never by name or Content-Type) and checked from its header
before anything is queued; a bad image inside a batch becomes an item failed with its reason,
while a single bad upload is refused outright. Accepted bytes are in storage before the
request returns, so nothing lives only in the API's memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from werkzeug.datastructures import FileStorage

from depthfleet.api import services
from depthfleet.api.archives import ArchiveEntry, archive_kind, iter_archive
from depthfleet.api.uploads import valid_digest
from depthfleet.shared import layout, sources
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.decode import decode_image, probe
from depthfleet.shared.imaging.encode import ARTIFACTS
from depthfleet.shared.jobs import NewItem

SNIFF_BYTES = 512
MAX_SIDE_LIMIT = 16384


@dataclass
class JobRequest:
    """What a request asks for: its items (lazily produced) and its options."""

    items: Iterable[NewItem]
    options: dict[str, Any]


def parse_options(raw: Any) -> dict[str, Any]:
    """Validate ``options``: ``outputs`` (subset of the artifacts) and ``max_side``."""
    if raw in (None, ""):
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise InputError("invalid_options", "options must be a JSON object") from None
    if not isinstance(raw, dict) or set(raw) - {"outputs", "max_side"}:
        raise InputError("invalid_options", "options may hold only 'outputs' and 'max_side'")
    outputs = raw.get("outputs") or list(ARTIFACTS)
    if not isinstance(outputs, list) or not outputs or set(outputs) - set(ARTIFACTS):
        raise InputError("invalid_options", f"outputs must be a non-empty list of {list(ARTIFACTS)}")
    max_side = raw.get("max_side")
    if max_side is not None and (not isinstance(max_side, int) or isinstance(max_side, bool)
                                 or not 1 <= max_side <= MAX_SIDE_LIMIT):
        raise InputError("invalid_options", f"max_side must be a whole number 1..{MAX_SIDE_LIMIT}")
    return {"outputs": [o for o in ARTIFACTS if o in outputs], "max_side": max_side}


def from_multipart(files: list[FileStorage], form_options: str | None, tenant: str) -> JobRequest:
    if not files:
        raise InputError("no_files", "send one or more 'file' parts (images or archives)")
    options = parse_options(form_options)
    if len(files) == 1:
        single = _single_image(files[0], tenant)
        if single is not None:
            return JobRequest([single], options)
    return JobRequest(_items_from_parts(files, tenant), options)


def from_json(body: Any, tenant: str) -> JobRequest:
    kinds = [k for k in ("keys", "source", "uploads") if isinstance(body, dict) and k in body]
    if len(kinds) != 1:
        raise InputError("invalid_request",
                         "send JSON with exactly one of 'keys', 'source' or 'uploads'")
    options = parse_options(body.get("options"))
    settings = services.settings()
    if "uploads" in body:
        return JobRequest(_items_from_uploads(body["uploads"], tenant), options)
    if "keys" in body:
        keys = body["keys"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise InputError("invalid_request", "'keys' must be a non-empty list of s3:// URLs")
        urls = [sources.check_allowed(settings, tenant, key) for key in keys]
        return JobRequest([NewItem(name=url, source=url) for url in urls], options)
    prefix = sources.check_allowed(settings, tenant, str(body["source"]))
    return JobRequest(_items_from_source(prefix), options)


def _items_from_uploads(uploads: Any, tenant: str) -> list[NewItem]:
    """Items naming content-addressed uploads (``PUT /v1/uploads/{sha256}``) of this tenant."""
    if not isinstance(uploads, list) or not uploads:
        raise InputError("invalid_request", "'uploads' must be a non-empty list")
    items = []
    for entry in uploads:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError("invalid_request", "each upload needs 'name' and 'sha256'")
        digest = valid_digest(entry.get("sha256"))
        items.append(NewItem(name=entry["name"], source=layout.input_key(tenant, digest),
                             sha256=digest))
    return items


def _items_from_source(prefix: str) -> Iterator[NewItem]:
    limit = services.settings().max_upload_bytes
    for url, size in sources.list_images(services.settings(), prefix):
        name = url[len(prefix):].lstrip("/") or url
        if size > limit:
            yield _failed(name, InputError("file_too_large", f"{size} bytes is over the limit"))
        else:
            yield NewItem(name=name, source=url, size=size)


def _single_image(part: FileStorage, tenant: str) -> NewItem | None:
    """A lone image upload is checked fully (decoded) and refused with 4xx if bad."""
    head = part.stream.read(SNIFF_BYTES)
    part.stream.seek(0)
    if archive_kind(head):
        return None
    data = part.stream.read()
    decode_image(data, services.settings().max_pixels)
    return _store(part.filename or "upload", data, tenant)


def _items_from_parts(files: list[FileStorage], tenant: str) -> Iterator[NewItem]:
    for part in files:
        name = part.filename or "upload"
        head = part.stream.read(SNIFF_BYTES)
        part.stream.seek(0)
        if archive_kind(head):
            yield from _items_from_archive(part.stream, tenant)
        else:
            yield _checked(name, part.stream.read(), tenant)


def _items_from_archive(stream: IO[bytes], tenant: str) -> Iterator[NewItem]:
    settings = services.settings()
    for entry in iter_archive(stream, settings.max_upload_bytes):
        yield _from_entry(entry, tenant)


def _from_entry(entry: ArchiveEntry, tenant: str) -> NewItem:
    if entry.error is not None:
        return _failed(entry.name, entry.error)
    return _checked(entry.name, entry.data or b"", tenant)


def _checked(name: str, data: bytes, tenant: str) -> NewItem:
    """Header check for a batch member: bad ones become failed items, good ones are stored."""
    try:
        probe(data, services.settings().max_pixels)
    except InputError as exc:
        return _failed(name, exc)
    return _store(name, data, tenant)


def _store(name: str, data: bytes, tenant: str) -> NewItem:
    sha = hashlib.sha256(data).hexdigest()
    key = layout.input_key(tenant, sha)
    storage = services.storage()
    if not storage.exists(key):
        storage.put(key, data)
    return NewItem(name=name, source=key, sha256=sha, size=len(data))


def _failed(name: str, error: InputError) -> NewItem:
    return NewItem(name=name, error=error.to_dict())
