"""Photos that are already in storage: which a tenant may read, listing them, reading them.

A source is an ``s3://bucket/key`` URL (or ``file:///dir/file`` for ``depthfleet run`` on one
machine). The API never fetches arbitrary URLs: a source must lie under one of the prefixes
the tenant is allowed (``DEPTHFLEET_TENANT_SOURCES``), or under the tenant's own folder of
the configured storage. Keyless loopback mode (tenant ``local``) may read the whole bucket.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
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
        self._client: Any = None

    def _s3(self) -> Any:
        self._client = self._client or s3_client(self.settings)
        return self._client

    def read(self, url: str, limit: int | None = None) -> bytes:
        buffer = io.BytesIO()
        self.copy_to(url, buffer, limit)
        return buffer.getvalue()

    def copy_to(self, url: str, target: IO[bytes], limit: int | None = None) -> int:
        """Stream the object into ``target``; returns its size.

        Archives are never held whole in memory, and no more than ``limit`` bytes are ever
        copied: an object that is larger (a presigned upload past the limit, say) is refused
        as ``file_too_large`` once its size is known, before any byte of it is read.
        """
        parsed = urlparse(url)
        try:
            if parsed.scheme == "file":
                with Path(unquote(parsed.path)).open("rb") as fh:
                    return _copy_bounded(fh, target, limit, url)
            bucket, key = split_s3_url(url)
            with _s3_errors(url):
                response = self._s3().get_object(Bucket=bucket, Key=key)
                try:
                    return _copy_bounded(response["Body"], target, limit, url,
                                         declared=response.get("ContentLength"))
                finally:
                    response["Body"].close()
        except FileNotFoundError:
            raise ObjectMissing(url) from None


def _copy_bounded(source: IO[bytes], target: IO[bytes], limit: int | None, url: str,
                  declared: int | None = None) -> int:
    if limit is not None and declared is not None and declared > limit:
        raise _too_large(url, declared, limit)
    copied = 0
    while chunk := source.read(1 << 20):
        copied += len(chunk)
        if limit is not None and copied > limit:
            raise _too_large(url, copied, limit)
        target.write(chunk)
    return copied


def _too_large(url: str, size: int, limit: int) -> InputError:
    return InputError("file_too_large", f"{url.rsplit('/', 1)[-1]!r} is over {size:,} bytes; "
                      f"the limit is {limit:,} (DEPTHFLEET_MAX_UPLOAD_MB)")


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
