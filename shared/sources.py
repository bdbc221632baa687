"""Photos that are already in storage: which a tenant may read, listing them, reading them.

A source is an ``s3://bucket/key`` URL (or ``file:///dir/file`` for ``depthfleet run`` on one
machine). The API never fetches arbitrary URLs: a source must lie under one of the prefixes
the tenant is allowed (``DEPTHFLEET_TENANT_SOURCES``), or under the tenant's own folder of
the configured storage. Keyless loopback mode (tenant ``local``) may read the whole bucket.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

from depthfleet.shared import layout
from depthfleet.shared.errors import InputError
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import LIST_PAGE, ObjectMissing, StorageError, s3_client, split_s3_url

LOCAL_TENANT = "local"


def allowed_prefixes(settings: Settings, tenant: str) -> list[str]:
    """The source URL prefixes ``tenant`` may read."""
    prefixes = list(settings.tenant_sources.get(tenant, ()))
    if settings.storage_url:
        root = settings.storage_url.rstrip("/")
        own = root + "/" if tenant == LOCAL_TENANT and not settings.api_keys else \
            f"{root}/{layout.tenant_prefix(tenant)}"
        prefixes.append(own)
    return prefixes


def normalize(url: str) -> str:
    """Canonical form; rejects schemes other than s3:// and file:// and any ``..`` segment."""
    parsed = urlparse(url)
    if parsed.scheme not in ("s3", "file") or (parsed.scheme == "s3" and not parsed.netloc):
        raise InputError("invalid_source", f"{url!r}: sources must be s3://bucket/key URLs")
    path = unquote(parsed.path)
    if any(part in (".", "..") for part in path.split("/")):
        raise InputError("invalid_source", f"{url!r}: '..' is not allowed in a source")
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def check_allowed(settings: Settings, tenant: str, url: str) -> str:
    """``url`` normalized, if the tenant may read it; else a 403-class InputError."""
    canonical = normalize(url)
    if not any(canonical.startswith(p) for p in allowed_prefixes(settings, tenant)):
        raise InputError("source_forbidden",
                         f"{url!r} is outside the storage prefixes this API key may read", 403)
    return canonical


def list_images(settings: Settings, prefix_url: str) -> Iterator[tuple[str, int]]:
    """Every object under ``prefix_url`` as (url, size), one listing page in memory at a time."""
    parsed = urlparse(prefix_url)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                yield path.as_uri(), path.stat().st_size
        return
    bucket, prefix = split_s3_url(prefix_url)
    client = s3_client(settings)
    for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE}):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield f"s3://{bucket}/{obj['Key']}", obj["Size"]


class SourceReader:
    """Reads source URLs for a worker, reusing one S3 client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: object | None = None

    def _s3(self) -> object:
        self._client = self._client or s3_client(self.settings)
        return self._client

    def read(self, url: str) -> bytes:
        buffer = io.BytesIO()
        self.copy_to(url, buffer)
        return buffer.getvalue()

    def copy_to(self, url: str, target: IO[bytes]) -> None:
        """Stream the object into ``target`` (archives are never held whole in memory)."""
        parsed = urlparse(url)
        if parsed.scheme == "file":
            try:
                with Path(unquote(parsed.path)).open("rb") as fh:
                    shutil.copyfileobj(fh, target, 1 << 20)
            except FileNotFoundError:
                raise ObjectMissing(url) from None
            return
        bucket, key = split_s3_url(url)
        with _s3_errors(url):
            self._s3().download_fileobj(bucket, key, target)


@contextmanager
def _s3_errors(url: str) -> Iterator[None]:
    """botocore's errors as ours: a missing object is final, anything else is transient."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise ObjectMissing(url) from None
        raise StorageError(f"reading {url} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"reading {url} failed: {exc}") from exc
