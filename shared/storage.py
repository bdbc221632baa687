"""Object storage behind one small interface: S3 (any S3-compatible endpoint) or a local folder.

Keys are plain ``/``-separated strings relative to the configured root (``s3://bucket/prefix``
or ``file:///dir``). Writes are whole-object and atomic, so a retried task that writes the
same key simply overwrites it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from depthfleet.shared.errors import DepthFleetError, InputError
from depthfleet.shared.settings import Settings

LIST_PAGE = 1000  # S3's own page size; listing never holds more than one page.


class StorageError(DepthFleetError):
    """Storage unreachable or failing: transient, worth retrying."""

    def __init__(self, message: str) -> None:
        super().__init__("storage_unavailable", message, 503)


class ObjectMissing(DepthFleetError):
    """The named object does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__("object_not_found", f"no object at {key!r}", 404)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class Stored:
    """An object being read: its size, and its bytes in pieces of at most ``STREAM_CHUNK``,
    so serving a 50 MB artifact holds one piece in memory, not 50 MB."""

    size: int
    chunks: Iterator[bytes]


STREAM_CHUNK = 1 << 20


class Storage(Protocol):
    """What the API and the workers need from object storage."""

    url: str

    def put(self, key: str, data: bytes | bytearray,
            content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, source: Path | IO[bytes]) -> None: ...
    def get(self, key: str) -> bytes: ...
    def stream(self, key: str) -> Stored: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def presigned_url(self, key: str, seconds: int) -> str | None: ...
    def presigned_put(self, key: str, seconds: int) -> str | None: ...
    def local_path(self, key: str) -> Path | None: ...
    def ping(self) -> None: ...
    def expire_prefix(self, prefix: str, days: int) -> None: ...


def safe_key(key: str) -> str:
    """Reject keys that could escape the storage root (``..``, absolute, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise InputError("invalid_key", f"invalid object key {key!r}")
    return key


class FileStorage:
    """A folder on local disk: the single-machine default of ``depthfleet run``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def put(self, key: str, data: bytes | bytearray,
            content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def put_file(self, key: str, source: Path | IO[bytes]) -> None:
        """Store a file's bytes (a path, or a binary stream read from where it stands)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp:
            with _opened(source) as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
        os.replace(tmp.name, target)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def stream(self, key: str) -> Stored:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        return Stored(os.fstat(handle.fileno()).st_size, _file_chunks(handle))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                yield ObjectInfo(full.relative_to(self.root).as_posix(), full.stat().st_size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, seconds: int) -> str | None:
        return None  # served through the API instead

    def presigned_put(self, key: str, seconds: int) -> str | None:
        return None  # uploads go through the API

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage folder {self.root} is not writable")

    def expire_prefix(self, prefix: str, days: int) -> None:
        """Delete files under ``prefix`` older than ``days`` (a folder has no lifecycle rules;
        the reaper calls this now and then)."""
        cutoff = time.time() - days * 86400
        for info in self.list(prefix):
            path = self.root / info.key
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def _read_body(body: Any, key: str) -> bytes:
    """A GET's body. A connection broken mid-body (reset, a host cut off) is a storage fault
    like a refused one, retried by the task, not an item's unexpected error."""
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    try:
        return body.read()
    except (BotoCoreError, HTTPError, OSError) as exc:
        raise StorageError(f"S3 read of {key!r} broke off: {exc}") from exc


class S3Storage:
    """A bucket (and optional prefix) on S3 or any S3-compatible server, through boto3."""

    def __init__(self, bucket: str, prefix: str, client: Any, url: str,
                 presign_client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.presign_client = presign_client or client
        self.url = url

    def _key(self, key: str) -> str:
        return self.prefix + safe_key(key)

    def _call(self, method: str, **kwargs: object) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(str(kwargs.get("Key", ""))) from None
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(f"S3 {method} on bucket {self.bucket!r} refused: {code}") from exc
            raise StorageError(f"S3 {method} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {method} failed: {exc}") from exc

    def put(self, key: str, data: bytes | bytearray,
            content_type: str = "application/octet-stream") -> None:
        self._call("put_object", Bucket=self.bucket, Key=self._key(key), Body=data,
                   ContentType=content_type)

    def put_file(self, key: str, source: Path | IO[bytes]) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20)
        try:
            with _opened(source) as src:
                self.client.upload_fileobj(src, self.bucket, self._key(key), Config=config)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 upload of {key!r} failed: {exc}") from exc

    def get(self, key: str) -> bytes:
        body = self._call("get_object", Bucket=self.bucket, Key=self._key(key))["Body"]
        return _read_body(body, key)

    def stream(self, key: str) -> Stored:
        response = self._call("get_object", Bucket=self.bucket, Key=self._key(key))
        return Stored(int(response["ContentLength"]), response["Body"].iter_chunks(STREAM_CHUNK))

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            page = self._call("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix + prefix,
                              MaxKeys=LIST_PAGE, **({"ContinuationToken": token} if token else {}))
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, key: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=self._key(key))

    def presigned_url(self, key: str, seconds: int) -> str | None:
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds)

    def presigned_put(self, key: str, seconds: int) -> str | None:
        return self.presign_client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds)

    def local_path(self, key: str) -> Path | None:
        return None

    def ping(self) -> None:
        self._call("head_bucket", Bucket=self.bucket)

    def expire_prefix(self, prefix: str, days: int) -> None:
        """Have the bucket expire objects under ``prefix`` after ``days``: our one lifecycle
        rule (by its ID), merged into the bucket's own rules rather than replacing them."""
        rule_id = f"depthfleet-expire-{self.prefix}{prefix}".rstrip("/")[:255]
        from botocore.exceptions import ClientError

        try:
            current = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise StorageError(f"S3 lifecycle of {self.bucket!r} unreadable: {exc}") from exc
            current = []
        rules = [rule for rule in current if rule.get("ID") != rule_id]
        rules.append({"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": self.prefix + prefix},
                      "Expiration": {"Days": days}})
        self._call("put_bucket_lifecycle_configuration", Bucket=self.bucket,
                   LifecycleConfiguration={"Rules": rules})


def _file_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(STREAM_CHUNK):
            yield chunk


@contextmanager
def _opened(source: Path | IO[bytes]) -> Iterator[IO[bytes]]:
    """A path opened for reading, or the stream itself (left open for its owner)."""
    if isinstance(source, Path):
        with source.open("rb") as fh:
            yield fh
    else:
        yield source


def s3_client(settings: Settings, endpoint: str | None = None) -> Any:
    """A boto3 S3 client (untyped: boto3 makes its methods at run time) for the configured
    endpoint: SigV4, path-style, standard retries.

    ``endpoint`` overrides it, e.g. the public name clients reach for presigned URLs.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint or settings.s3_endpoint,
                                          config=config)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError("invalid_source", f"{url!r} is not an s3://bucket/key URL")
    return parsed.netloc, parsed.path.lstrip("/")


def open_storage(settings: Settings, url: str | None = None) -> Storage:
    """The storage named by ``url`` (default: ``settings.storage_url``)."""
    url = url or settings.storage_url
    if not url:
        raise ValueError("DEPTHFLEET_STORAGE_URL is not set")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        bucket, prefix = split_s3_url(url)
        public = settings.s3_public_endpoint
        return S3Storage(bucket, prefix, s3_client(settings), url.rstrip("/"),
                         presign_client=s3_client(settings, public) if public else None)
    raise ValueError(f"DEPTHFLEET_STORAGE_URL must be s3://bucket/prefix or file:///dir, not {url!r}")
