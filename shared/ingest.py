"""Turning inputs into job items: uploaded bytes, archive entries, objects under a bucket prefix.

Used by the API for what arrives in a request and by workers for what is too big to expand
inside a request (bucket prefixes, archives already in storage). Every input is sniffed by
content, never by name; bad ones become items failed with their reason, good ones are stored
content-addressed so the same bytes are stored once per tenant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO

from depthfleet.shared import layout, sources
from depthfleet.shared.archives import ArchiveEntry, ArchiveLimits, iter_archive
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.decode import probe
from depthfleet.shared.jobs import NewItem
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import Storage

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive_name(url: str) -> bool:
    """Routing hint for objects in storage (their content is sniffed again when read)."""
    return url.lower().endswith(ARCHIVE_SUFFIXES)


def failed(name: str, error: InputError) -> NewItem:
    return NewItem(name=name, error=error.to_dict())


def store_input(storage: Storage, tenant: str, name: str, data: bytes) -> NewItem:
    """Store bytes content-addressed (once per tenant) and describe them as an item."""
    sha = hashlib.sha256(data).hexdigest()
    key = layout.input_key(tenant, sha)
    if not storage.exists(key):
        storage.put(key, data)
    return NewItem(name=name, source=key, sha256=sha, size=len(data))


def checked_input(storage: Storage, tenant: str, name: str, data: bytes,
                  max_pixels: int) -> NewItem:
    """Header check for a batch member: bad ones fail with their reason, good ones are stored."""
    try:
        probe(data, max_pixels)
    except InputError as exc:
        return failed(name, exc)
    return store_input(storage, tenant, name, data)


def items_from_archive(stream: IO[bytes], storage: Storage, tenant: str,
                       settings: Settings, prefix: str = "") -> Iterator[NewItem]:
    """One item per regular file of the archive, named by its path inside it."""
    limits = ArchiveLimits(entry_bytes=settings.max_entry_mb << 20,
                           archive_bytes=settings.max_archive_inflated_mb << 20,
                           entries=settings.max_archive_entries,
                           cpu_seconds=settings.archive_cpu_seconds)
    for entry in iter_archive(stream, limits):
        item = _from_entry(entry, storage, tenant, settings.max_pixels, prefix)
        del entry  # the entry's bytes go before the next entry is inflated
        yield item


def _from_entry(entry: ArchiveEntry, storage: Storage, tenant: str, max_pixels: int,
                prefix: str) -> NewItem:
    name = prefix + entry.name
    if entry.error is not None:
        item = failed(name, entry.error)
    else:
        item = checked_input(storage, tenant, name, entry.data or b"", max_pixels)
    item.raw_name = entry.raw_name
    return item


def items_from_prefix(settings: Settings, prefix_url: str) -> Iterator[NewItem]:
    """One item per object under the prefix, named by its path below it; pages, never a list."""
    limit = settings.max_upload_bytes
    for url, size in sources.list_images(settings, prefix_url):
        name = url[len(prefix_url):].lstrip("/") or url
        if size > limit:
            yield failed(name, InputError("file_too_large", f"{size} bytes is over the limit"))
        else:
            yield NewItem(name=name, source=url, size=size)
