"""Reading a JSON request body, the one way every JSON route does it.

Bounded before any parsing: at most ``MAX_JSON_BYTES`` are read (``413 file_too_large``
beyond), nesting deeper than ``MAX_JSON_DEPTH`` is refused by a linear scan without recursion,
and whatever is not UTF-8 JSON sent as ``application/json`` is ``400 invalid_json``. The parsed
value is kept for the rest of the request, so a second call returns it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from flask import g, request

from depthfleet.api import services
from depthfleet.shared.errors import InputError

MAX_JSON_BYTES = 64 << 20  # a tenant's whole quota of uploads fits in one job request
MAX_JSON_DEPTH = 64
READ_CHUNK = 1 << 20
SCAN_CHUNK = 1 << 20

# A JSON string, or an unterminated one up to the end; possessive, so linear on any input.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NESTING = np.zeros(256, dtype=np.int8)
_NESTING[[ord("["), ord("{")]] = 1
_NESTING[[ord("]"), ord("}")]] = -1
_UNSET = object()


def invalid(message: str) -> InputError:
    return InputError("invalid_json", message)


def json_body() -> Any:
    """The request's JSON value; raises ``InputError`` (4xx) for anything else."""
    cached = g.get("_json_body", _UNSET)
    if cached is _UNSET:
        cached = g._json_body = _parse(_read(_limit()))
    return cached


def _limit() -> int:
    return min(MAX_JSON_BYTES, services.settings().max_upload_bytes)


def _read(limit: int) -> bytes:
    if not request.is_json:
        raise invalid("send the body as JSON with 'Content-Type: application/json'")
    return b"".join(body_chunks(limit, lambda: _too_large(limit)))


def body_chunks(limit: int, too_large: Callable[[], Exception]) -> Iterator[bytes]:
    """The request body in chunks, framed by Content-Length or chunked; ``too_large()`` is
    raised (a 413) as soon as it is known to pass ``limit``.

    werkzeug stops a chunked body (no Content-Length) at MAX_CONTENT_LENGTH without an error,
    so a body the server frames itself (gunicorn sets ``wsgi.input_terminated``) is read
    directly and counted here.
    """
    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    if request.environ.get("wsgi.input_terminated"):
        stream = request.environ["wsgi.input"]
    else:
        stream = request.stream
    size = 0
    while chunk := stream.read(min(READ_CHUNK, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise too_large()
        yield chunk


def _too_large(limit: int) -> InputError:
    return InputError("file_too_large", f"a JSON body may hold at most {limit} bytes", 413)


def max_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in ``data``, brackets inside strings not counted."""
    structure = np.frombuffer(_STRING.sub(b"", data), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, structure.size, SCAN_CHUNK):  # bounded temporaries
        running = np.cumsum(_NESTING[structure[start:start + SCAN_CHUNK]], dtype=np.int64)
        deepest = max(deepest, depth + int(running.max()))
        depth += int(running[-1])
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """``json.loads`` within this module's depth bound; ``ValueError`` for anything not JSON.

    Also for form fields holding JSON (``options``), which arrive decoded already.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    openers = data.count(b"[") + data.count(b"{")
    if openers > MAX_JSON_DEPTH and max_depth(data) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON may nest at most {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"JSON may nest at most {MAX_JSON_DEPTH} levels deep") from None


def _parse(data: bytes) -> Any:
    if not data.strip():
        raise invalid("the request body is empty; send a JSON value")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the request body is not valid UTF-8") from None
    try:
        return loads(text)
    except ValueError as exc:
        raise invalid(_reason(exc)) from None


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"the request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return f"the request body is not accepted as JSON: {str(exc)[:200]}"
