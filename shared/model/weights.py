"""Resolve ``Settings.weights`` into a verified local checkpoint file.

Sources: a local path (or ``file://`` URL), used in place; ``s3://bucket/key`` (boto3, honouring
``Settings.s3_endpoint`` and the standard ``AWS_*`` credentials); ``https://`` or, for internal
mirrors, ``http://`` (requests, streaming, with timeouts). Nothing touches the network unless
the source is a URL that says so.

Remote checkpoints land in ``cache_dir/weights/<sha256>.pt``: content-addressed, so a machine
downloads each file once whatever URL it came from, and written under a lock through a
temporary file (see ``cachefiles``), so concurrent workers never see or corrupt a partial file.

Trust: with ``Settings.weights_sha256`` set, every load must match it. Without it, the first
download's hash is recorded in ``cache_dir/weights/sources/<hash of the URL>.json`` and every
later load from that URL must match it (trust on first use), so a file swapped on the server
is refused rather than silently used. Custom CAs for HTTPS mirrors: requests honours
``REQUESTS_CA_BUNDLE`` (a PEM bundle that replaces the default roots); boto3 honours
``AWS_CA_BUNDLE``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from depthfleet.shared.digests import sha256_file
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.model.cachefiles import locked, publish, temporary_path
from depthfleet.shared.settings import Settings

CHUNK_BYTES = 1 << 20
HTTP_TIMEOUT = (10, 60)  # seconds to connect, and between two received chunks
S3_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},  # S3-compatible servers rarely have per-bucket DNS
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=10,
    read_timeout=60,
)
PIN_VARIABLE = "DEPTHFLEET_WEIGHTS_SHA256"


@dataclass(frozen=True)
class ResolvedWeights:
    """A local checkpoint file whose sha256 has been computed (and checked, see ``trust``)."""

    path: Path
    sha256: str
    source: str
    trust: str  # "pinned" (matches the configured hash), "first-use" (the recorded one), "local"


def resolve_weights(settings: Settings) -> ResolvedWeights:
    """The configured checkpoint as a verified local file; raises WeightsError."""
    source = settings.weights
    scheme = urlsplit(source).scheme
    if not scheme:
        return _local(Path(source), settings)
    if scheme == "file":
        return _local(Path(unquote(urlsplit(source).path)), settings)
    if scheme in ("s3", "https", "http"):
        return _cached_download(source, settings)
    raise WeightsError(f"weights source {source!r}: use a local path, s3://, https:// or http://")


def describe_weights(settings: Settings) -> str:
    """What ``depthfleet weights`` prints: fetches and verifies, then path, sha256 and trust."""
    weights = resolve_weights(settings)
    pin = f"pin it: {PIN_VARIABLE}={weights.sha256}"
    trust = {
        "pinned": f"matches {PIN_VARIABLE}",
        "first-use": f"matches the hash recorded on first use; {pin}",
        "local": f"local file, not verified; {pin}",
    }[weights.trust]
    return (
        f"path    {weights.path}\n"
        f"sha256  {weights.sha256}\n"
        f"source  {weights.source}\n"
        f"trust   {trust}"
    )


def _local(path: Path, settings: Settings) -> ResolvedWeights:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (set DEPTHFLEET_WEIGHTS)")
    sha256 = sha256_file(path)
    pinned = settings.weights_sha256
    if pinned and sha256 != pinned:
        raise _mismatch(str(path), pinned, sha256, record=None)
    return ResolvedWeights(path.resolve(), sha256, str(path), "pinned" if pinned else "local")


def _cached_download(source: str, settings: Settings) -> ResolvedWeights:
    cache = settings.cache_dir / "weights"
    record = cache / "sources" / f"{hashlib.sha256(source.encode()).hexdigest()[:32]}.json"
    pinned = settings.weights_sha256
    trust = "pinned" if pinned else "first-use"
    with locked(cache / ".lock"):
        expected = pinned or _recorded_sha256(record)
        if expected and _is_intact(cache / f"{expected}.pt", expected):
            return ResolvedWeights(cache / f"{expected}.pt", expected, source, trust)
        with temporary_path(cache) as partial:
            got = _download(source, partial, settings)
            if expected and got != expected:
                raise _mismatch(source, expected, got, record=None if pinned else record)
            publish(partial, cache / f"{got}.pt")
        if not expected:
            _record_sha256(record, source, got)
        return ResolvedWeights(cache / f"{got}.pt", got, source, trust)


def _mismatch(source: str, expected: str, got: str, record: Path | None) -> WeightsError:
    """The refusal for a hash that is not the pinned one, or not the first-use ``record``."""
    if record is None:
        return WeightsError(
            f"checkpoint {source} has sha256 {got}, but {PIN_VARIABLE} expects {expected}. "
            "Point DEPTHFLEET_WEIGHTS at the intended file, or pin the new hash if it is intended."
        )
    return WeightsError(
        f"{source} now serves a file with sha256 {got}, but its first download had {expected} "
        f"(recorded in {record}). The file behind the URL changed: if the new one is intended, "
        f"pin it with {PIN_VARIABLE} or delete that record."
    )


def _is_intact(path: Path, sha256: str) -> bool:
    """True if the cached entry exists with the right content; a damaged one is removed."""
    if not path.is_file():
        return False
    if sha256_file(path) == sha256:
        return True
    path.unlink()
    return False


def _recorded_sha256(record: Path) -> str | None:
    return json.loads(record.read_text())["sha256"] if record.is_file() else None


def _record_sha256(record: Path, source: str, sha256: str) -> None:
    recorded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = {"source": source, "sha256": sha256, "recorded_at": recorded_at}
    with temporary_path(record.parent) as partial:
        partial.write_text(json.dumps(entry, indent=1) + "\n")
        publish(partial, record)


def _download(source: str, dest: Path, settings: Settings) -> str:
    """Stream ``source`` into ``dest``; returns its sha256. Short reads raise WeightsError."""
    if source.startswith("s3://"):
        body = _s3_body(source, settings.s3_endpoint)
    else:
        body = _http_body(source)
    digest, received = hashlib.sha256(), 0
    try:
        with body as (length, chunks), dest.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
    except (requests.RequestException, BotoCoreError, ClientError, OSError) as exc:
        raise WeightsError(f"could not download weights from {source}: {exc}") from exc
    if length is not None and received != length:  # urllib3 1.x does not check by itself
        raise WeightsError(
            f"could not download weights from {source}: cut short at {received} of {length} bytes"
        )
    return digest.hexdigest()


@contextmanager
def _http_body(url: str) -> Iterator[tuple[int | None, Iterator[bytes]]]:
    # identity encoding: Content-Length then counts the bytes we receive
    headers = {"Accept-Encoding": "identity"}
    with requests.get(url, stream=True, timeout=HTTP_TIMEOUT, headers=headers) as response:
        response.raise_for_status()
        length = response.headers.get("Content-Length")
        yield (int(length) if length else None), response.iter_content(CHUNK_BYTES)


@contextmanager
def _s3_body(url: str, endpoint: str | None) -> Iterator[tuple[int | None, Iterator[bytes]]]:
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise WeightsError(f"weights URL {url!r} must look like s3://bucket/key")
    client = boto3.client("s3", endpoint_url=endpoint, config=S3_CONFIG)
    response = client.get_object(Bucket=bucket, Key=key)
    with closing(response["Body"]) as body:
        yield response["ContentLength"], body.iter_chunks(CHUNK_BYTES)
