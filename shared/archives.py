"""Reading uploaded ``.zip``, ``.tar`` and ``.tar.gz`` archives safely, one entry at a time.

Nothing is ever extracted to disk by name: entries are read into memory one by one (bounded
by the upload limit) and stored content-addressed, so traversal names (``../``) and links can
do no harm; they are still reported as failed items so the user learns about them. A zip bomb
is stopped by reading at most ``limit`` bytes of any entry, whatever its header claims.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from depthfleet.shared.errors import InputError

MAX_ENTRIES = 250_000
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
OS_METADATA_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class ArchiveEntry:
    """One regular file of an archive: its path and bytes, or why it was not read."""

    name: str
    data: bytes | None = None
    error: InputError | None = None


def archive_kind(head: bytes) -> str | None:
    """'zip', 'tar' or 'tar.gz' from the first bytes, else None (plain gzip counts as tar.gz)."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def unsafe_name(name: str) -> str | None:
    """Why an entry name is unsafe (absolute, traversal, drive letter), or None."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return "absolute path"
    if ".." in normalized.split("/"):
        return "path escapes the archive ('..')"
    if "\x00" in normalized:
        return "NUL byte in name"
    return None


def iter_archive(stream: IO[bytes], limit: int) -> Iterator[ArchiveEntry]:
    """Entries of the archive in ``stream`` in stored order; raises InputError if unreadable."""
    head = stream.read(512)
    stream.seek(0)
    kind = archive_kind(head)
    reader = _zip_entries if kind == "zip" else _tar_entries
    count = 0
    for entry in reader(stream, limit):
        if is_os_metadata(entry.name):
            continue
        count += 1
        if count > MAX_ENTRIES:
            raise InputError("too_many_entries",
                             f"archives may hold at most {MAX_ENTRIES} files", 413)
        yield entry


def is_os_metadata(name: str) -> bool:
    """Files that archivers add beside the photos (macOS resource forks, Finder and Explorer
    caches): skipped silently, as every unzip tool's user would expect."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith("._") or base in OS_METADATA_FILES


def _checked_name(name: str) -> ArchiveEntry | None:
    reason = unsafe_name(name)
    if reason:
        return ArchiveEntry(name, error=InputError("unsafe_path", f"{name!r}: {reason}"))
    return None


def _read_bounded(fh: IO[bytes], name: str, limit: int) -> ArchiveEntry:
    data = fh.read(limit + 1)
    if len(data) > limit:
        return ArchiveEntry(name, error=InputError(
            "file_too_large", f"{name!r} unpacks to more than {limit} bytes"))
    return ArchiveEntry(name, data=data)


def _zip_entries(stream: IO[bytes], limit: int) -> Iterator[ArchiveEntry]:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError("corrupt_archive", f"unreadable zip archive: {exc}", 422) from None
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            yield _checked_name(info.filename) or _zip_member(archive, info, limit)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> ArchiveEntry:
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return ArchiveEntry(info.filename, error=InputError("unsupported_entry",
                                                            f"{info.filename!r} is a link"))
    if info.file_size > limit:
        return ArchiveEntry(info.filename, error=InputError(
            "file_too_large", f"{info.filename!r} declares {info.file_size} bytes"))
    try:
        with archive.open(info) as fh:
            return _read_bounded(fh, info.filename, limit)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        return ArchiveEntry(info.filename, error=InputError("corrupt_archive",
                                                            f"{info.filename!r}: {exc}"))


def _tar_entries(stream: IO[bytes], limit: int) -> Iterator[ArchiveEntry]:
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise InputError("corrupt_archive", f"unreadable tar archive: {exc}", 422) from None
    try:
        with archive:
            for member in archive:
                entry = _tar_member(archive, member, limit)
                if entry is not None:
                    yield entry
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield ArchiveEntry("(rest of archive)", error=InputError(
            "corrupt_archive", f"the archive is damaged after this point: {exc}"))


def _tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo,
                limit: int) -> ArchiveEntry | None:
    if member.isdir():
        return None
    if member.issym() or member.islnk():
        return ArchiveEntry(member.name, error=InputError("unsupported_entry",
                                                          f"{member.name!r} is a link"))
    if not member.isfile():
        return ArchiveEntry(member.name, error=InputError("unsupported_entry",
                                                          f"{member.name!r} is not a regular file"))
    checked = _checked_name(member.name)
    if checked:
        return checked
    if member.size > limit:
        return ArchiveEntry(member.name, error=InputError(
            "file_too_large", f"{member.name!r} is {member.size} bytes"))
    fh = archive.extractfile(member)
    return _read_bounded(fh, member.name, limit) if fh else None
