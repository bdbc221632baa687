"""Turning a ``POST /v1/jobs`` request into stored inputs and job items.

What arrives in the request (images, archives) is stored before the request returns, so
nothing lives only in the API's memory. Archives (uploaded, or named in storage) and bucket
prefixes are expanded by a worker (``deferred``): the API never opens an archive nor decodes
a pixel, so no input can cost it more than reading and storing its bytes. Images are checked
from their header: a single upload with a bad one is refused outright; inside a batch, a
bad image becomes an item failed with its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import FileStorage

from depthfleet.api import bodies, services
from depthfleet.api.uploads import valid_digest
from depthfleet.shared import ingest, layout, sources
from depthfleet.shared.archives import ARCHIVE_SNIFF_BYTES, archive_kind
from depthfleet.shared.artifacts import ARTIFACTS, DRAWINGS, drawing_options, stored_outputs
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.decode import probe
from depthfleet.shared.jobs import NewItem
from depthfleet.shared.names import clean_text

MAX_SIDE_LIMIT = 16384
MAX_NAME_CHARS = 1024
OPTION_KEYS = {"outputs", "max_side", *(drawing.option for drawing in DRAWINGS.values())}


@dataclass
class JobRequest:
    """What a request asks for: items now, sources for a worker to expand, and options."""

    items: Iterable[NewItem]
    options: dict[str, Any]
    deferred: list[dict[str, str]] = field(default_factory=list)


def parse_options(raw: Any) -> dict[str, Any]:
    """Validate ``options`` (an object, or a JSON string of one from a form field):
    ``outputs`` (artifact names to store; none or empty: the compact set, from which the
    full-size ones are rendered on read), ``max_side``, and the options of the drawn artifacts
    asked for (``parallax``, ``mesh``). The job keeps what will be stored, defaults filled in."""
    if raw is None or raw == "":
        raw = {}
    if isinstance(raw, str):
        try:
            raw = bodies.loads(raw)
        except ValueError:
            raise InputError("invalid_options", "options must be a JSON object") from None
    if not isinstance(raw, dict) or set(raw) - OPTION_KEYS:
        raise InputError("invalid_options", f"options may hold only {sorted(OPTION_KEYS)}")
    outputs = raw.get("outputs") or []
    if not isinstance(outputs, list) or \
            not all(isinstance(o, str) and o in ARTIFACTS for o in outputs):
        raise InputError("invalid_options", f"outputs must be a list of {list(ARTIFACTS)}")
    max_side = raw.get("max_side")
    if max_side is not None and (not isinstance(max_side, int) or isinstance(max_side, bool)
                                 or not 1 <= max_side <= MAX_SIDE_LIMIT):
        raise InputError("invalid_options", f"max_side must be a whole number 1..{MAX_SIDE_LIMIT}")
    try:
        drawn = drawing_options(raw, outputs)
    except ValueError as exc:
        raise InputError("invalid_options", str(exc)) from None
    return {"outputs": list(stored_outputs(outputs)), "max_side": max_side, **drawn}


# -- multipart uploads ------------------------------------------------------------------
def from_multipart(files: list[FileStorage], form_options: str | None, tenant: str) -> JobRequest:
    """Images become items now (header-checked); archives are stored whole for a worker."""
    if not files:
        raise InputError("no_files", "send one or more 'file' parts (images or archives)")
    options = parse_options(form_options)
    if len(files) == 1 and not _is_archive(files[0]):
        return JobRequest([_single_image(files[0], tenant)], options)
    items, deferred = [], []
    for part in files:
        if _is_archive(part):
            deferred.append(_staged_archive(part, tenant))
        else:
            items.append(ingest.checked_input(services.storage(), tenant, _part_name(part),
                                              part.stream.read(), services.settings().max_pixels))
    return JobRequest(items, options, deferred=deferred)


def _is_archive(part: FileStorage) -> bool:
    head = part.stream.read(ARCHIVE_SNIFF_BYTES)
    part.stream.seek(0)
    return archive_kind(head) is not None


def _part_name(part: FileStorage) -> str:
    return clean_text(part.filename or "upload")[:MAX_NAME_CHARS]


def _single_image(part: FileStorage, tenant: str) -> NewItem:
    """A lone image is checked from its header here, so a bad one is refused with its 4xx
    code; damage inside its pixel data is found by the worker, which fails the item."""
    data = part.stream.read()
    probe(data, services.settings().max_pixels)
    return ingest.store_input(services.storage(), tenant, _part_name(part), data)


def _staged_archive(part: FileStorage, tenant: str) -> dict[str, str]:
    """Store an uploaded archive as it came (never opened here) for a worker to expand."""
    storage = services.storage()
    filename = _part_name(part).replace("\\", "/").rsplit("/", 1)[-1].lstrip(".") or "archive"
    key = layout.staging_key(tenant, uuid.uuid4().hex, filename)
    storage.put_file(key, part.stream)
    return {"kind": "archive", "url": f"{storage.url}/{key}", "staged": "1"}


# -- JSON: objects already in storage ---------------------------------------------------
def from_json(body: Any, tenant: str) -> JobRequest:
    kinds = [k for k in ("keys", "source", "uploads") if isinstance(body, dict) and k in body]
    if len(kinds) != 1:
        raise InputError("invalid_request",
                         "send JSON with exactly one of 'keys', 'source' or 'uploads'")
    options = parse_options(body.get("options"))
    if "uploads" in body:
        return JobRequest(_items_from_uploads(body["uploads"], tenant), options)
    if "source" in body:
        prefix = sources.check_allowed(services.settings(), tenant, str(body["source"]))
        return JobRequest([], options, deferred=[{"kind": "prefix", "url": prefix}])
    return _from_keys(body["keys"], tenant, options)


def _from_keys(keys: Any, tenant: str, options: dict[str, Any]) -> JobRequest:
    """Images become items now; archive objects are expanded by a worker."""
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise InputError("invalid_request", "'keys' must be a non-empty list of s3:// URLs")
    urls = [sources.check_allowed(services.settings(), tenant, key) for key in keys]
    return JobRequest(
        [NewItem(name=url, source=url) for url in urls if not ingest.is_archive_name(url)],
        options,
        deferred=[{"kind": "archive", "url": url} for url in urls if ingest.is_archive_name(url)])


def _items_from_uploads(uploads: Any, tenant: str) -> list[NewItem]:
    """Items naming content-addressed uploads (``PUT /v1/uploads/{sha256}``) of this tenant."""
    if not isinstance(uploads, list) or not uploads:
        raise InputError("invalid_request", "'uploads' must be a non-empty list")
    items = []
    for entry in uploads:
        if not isinstance(entry, dict) or not _storable_name(entry.get("name")):
            raise InputError("invalid_request", "each upload needs 'name' (text of 1.."
                             f"{MAX_NAME_CHARS} characters) and 'sha256'")
        digest = valid_digest(entry.get("sha256"))
        items.append(NewItem(name=entry["name"], source=layout.input_key(tenant, digest),
                             sha256=digest))
    return items


def _storable_name(name: Any) -> bool:
    """Text of bounded length; lone surrogates ("\\udcfc" in JSON) are made readable by the
    job store (``names.clean_text``), not refused."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS
