"""Reading uploaded ``.zip``, ``.tar`` and ``.tar.gz`` archives safely, one entry at a time.

Nothing is ever extracted to disk by name: entries are read into memory one by one and stored
content-addressed, so traversal names (``../``) and links can do no harm; they are still
reported as failed entries so the user learns about them.

An archive can never poison or stall the job that expands it:

- Names are valid Unicode whatever the archiver wrote (``shared/names.py``); the bytes of a
  name that was not UTF-8 are kept in ``ArchiveEntry.raw_name``.
- A damaged member (bad CRC, corrupt or truncated data, a header that lies about its size,
  encryption, an unknown compression method) fails alone and the next ones are still read.
- ``ArchiveLimits`` bounds every expansion: no entry inflates past ``entry_bytes + 1`` bytes
  whatever its header says (the zip reader is our own: the standard library's calls the
  bzip2 and LZMA decompressors without a bound, and builds the whole central directory in
  memory, ~600 bytes an entry); all bytes inflated, entries read and CPU seconds spent are
  budgeted per archive, and when one runs out a last ``archive_limit`` entry says which.
  Zip entries whose data overlaps another's (the overlapping-entries bomb) fail directly.
"""

from __future__ import annotations

import bz2
import io
import itertools
import lzma
import struct
import tarfile
import time
import zlib
from array import array
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, NamedTuple, cast

import numpy as np

from depthfleet.shared.errors import InputError
from depthfleet.shared.names import ZIP_LEGACY, clean_text, escaped_bytes, readable_name

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_BLOCK = 512
ARCHIVE_SNIFF_BYTES = 4096  # what archive_kind needs: a gzip header may carry a file name
OS_METADATA_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
REST_OF_ARCHIVE = "(rest of archive)"

_OUT_CHUNK = 1 << 20  # the most one decompress call may produce, and one tar data read asks
_IN_CHUNK = 1 << 16  # compressed bytes read at a time
_HEADER_WINDOW = 4 << 20  # the most tarfile may read for one header (pax, long names, sparse)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive's expansion may cost; exceeding any ends it with ``archive_limit``."""

    entry_bytes: int  # the largest entry, inflated; bigger ones fail with file_too_large
    archive_bytes: int  # bytes inflated in all, including those inflated only to skip them
    entries: int  # records read: files, directories, links, metadata
    cpu_seconds: float  # CPU spent inside iter_archive (not in its consumer)


@dataclass
class ArchiveEntry:
    """One regular file of an archive: its path and bytes, or why it was not read."""

    name: str  # valid Unicode (names.clean_text holds), "/"-separated as stored
    data: bytes | None = None
    error: InputError | None = None
    raw_name: bytes | None = None  # the name's bytes as stored, when they were not UTF-8


def archive_kind(head: bytes) -> str | None:
    """'zip', 'tar' or 'tar.gz' from the first ``ARCHIVE_SNIFF_BYTES`` bytes, else None.

    A gzip is a tar.gz only if it inflates to a tar header (or is damaged or has too long a
    header to tell from ``head``: the tar reader then says what it is); any other gzip is
    no archive, so a single ``photo.jpg.gz`` is ``not_an_image`` like any other non-image.
    """
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return None if _gzip_holds_tar(head) is False else "tar.gz"
    return "tar" if _is_tar_header(head) else None


def _gzip_holds_tar(head: bytes) -> bool | None:
    """Whether gzip data starting with ``head`` inflates to a tar header; None: cannot tell."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        block = inflate.decompress(head, _TAR_BLOCK)
    except zlib.error:
        return None
    if len(block) < _TAR_BLOCK and not inflate.eof:
        return None
    return _is_tar_header(block)


def _is_tar_header(block: bytes) -> bool:
    """A POSIX/GNU header (``ustar`` magic), or an old (v7) one whose checksum is right."""
    if len(block) < _TAR_BLOCK:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * ord(" ") + sum(block[156:_TAR_BLOCK])


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


def is_os_metadata(name: str) -> bool:
    """Files that archivers add beside the photos (macOS resource forks, Finder and Explorer
    caches): skipped silently, as every unzip tool's user would expect."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith("._") or base in OS_METADATA_FILES


def iter_archive(stream: IO[bytes], limits: ArchiveLimits) -> Iterator[ArchiveEntry]:
    """Entries of the archive in ``stream`` (seekable) in stored order, within ``limits``.

    Raises ``InputError("corrupt_archive", ..., 422)`` if the archive cannot be read at all,
    and ``not_an_image`` for gzip data that holds no tar (the file is no archive at all).
    """
    head = stream.read(ARCHIVE_SNIFF_BYTES)
    stream.seek(0)
    kind = archive_kind(head)
    if kind is None and head.startswith(_GZIP_MAGIC):
        raise InputError("not_an_image", "the file is gzip data but not a tar archive, so "
                         "neither an archive nor an image")
    budget = _Budget(limits)
    reader = _zip_entries(stream, budget) if kind == "zip" else \
        _tar_entries(stream, budget, gzipped=kind == "tar.gz")
    read = 0
    try:
        while True:
            budget.resume()
            try:
                entry = next(reader, None)
            except _LimitReached as limit:
                entries = "entry" if read == 1 else "entries"
                yield ArchiveEntry(REST_OF_ARCHIVE, error=InputError(
                    "archive_limit", f"stopped after {read} {entries}: {limit}"))
                return
            finally:
                budget.pause()
            if entry is None:
                return
            read += 1
            yield entry
            del entry  # its bytes may go while the next entry is read
    finally:
        reader.close()


# -- shared helpers ----------------------------------------------------------------------
class _LimitReached(Exception):
    """An ArchiveLimits budget ran out (its message says which, and its value)."""


class _Damaged(Exception):
    """The bytes of one entry (zip) or of the stream from here on (tar) are unreadable."""


class _Budget:
    """The per-archive budgets of ``ArchiveLimits``; CPU counts only while ``resume``d."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.inflated = 0
        self.records = 0
        self._cpu = 0.0
        self._since = time.thread_time()

    def resume(self) -> None:
        self._since = time.thread_time()

    def pause(self) -> None:
        self._cpu += time.thread_time() - self._since

    def check(self) -> None:
        if self._cpu + time.thread_time() - self._since > self.limits.cpu_seconds:
            raise _LimitReached(f"the expansion took more than {self.limits.cpu_seconds:g} "
                                f"CPU seconds (cpu_seconds)")

    def inflate(self, count: int) -> None:
        self.inflated += count
        if self.inflated > self.limits.archive_bytes:
            raise _LimitReached(f"the archive unpacks to more than "
                                f"{self.limits.archive_bytes:,} bytes (archive_bytes)")
        self.check()

    def record(self) -> None:
        self.records += 1
        if self.records > self.limits.entries:
            raise _LimitReached(f"the archive holds more than {self.limits.entries:,} "
                                f"entries (entries)")
        self.check()


def _failed(name: str, code: str, message: str, raw_name: bytes | None) -> ArchiveEntry:
    return ArchiveEntry(name, error=InputError(code, f"{name!r} {message}"), raw_name=raw_name)


def _unsafe(name: str, raw_name: bytes | None) -> ArchiveEntry | None:
    reason = unsafe_name(name)
    return _failed(name, "unsafe_path", f"is unsafe: {reason}", raw_name) if reason else None


def _too_large(name: str, size: int, limit: int, raw_name: bytes | None) -> ArchiveEntry:
    return _failed(name, "file_too_large",
                   f"is {size:,} bytes; entries may unpack to {limit:,} at most "
                   "(DEPTHFLEET_MAX_ENTRY_MB)", raw_name)


def _rest_damaged(reason: object) -> ArchiveEntry:
    return ArchiveEntry(REST_OF_ARCHIVE, error=InputError(
        "corrupt_archive", f"the archive is damaged after this point: {reason}"))


# -- zip ---------------------------------------------------------------------------------
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the EOCD
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes, just before the locator
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_STORED, _DEFLATED, _BZIP2, _LZMA = 0, 8, 12, 14
_OTHER_METHODS = {1: "shrink", 6: "implode", 9: "deflate64", 93: "zstd", 95: "xz", 98: "PPMd",
                  99: "AES encryption"}
_ENCRYPTED, _UNICODE_PATH, _ZIP64 = 0x1, 0x7075, 0x0001


class _Layout(NamedTuple):
    directory: int  # where the central directory starts in the stream
    end: int  # where it ends
    shift: int  # bytes before the archive proper (self-extractors): added to every offset


class _Record(NamedTuple):
    raw: bytes
    extra: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    attributes: int
    offset: int


def _zip_entries(fp: IO[bytes], budget: _Budget) -> Generator[ArchiveEntry, None, None]:
    layout = _zip_layout(fp)
    count, overlapping, damage = _survey(fp, layout, budget)
    if count == 0 and damage:
        raise InputError("corrupt_archive", f"unreadable zip archive: {damage}", 422)
    for index, record in enumerate(itertools.islice(_records(fp, layout), count)):
        budget.record()
        entry = _zip_member(fp, layout, record, bool(overlapping[index]), budget)
        if entry is not None:
            yield entry
        del entry
    if damage:
        yield _rest_damaged(f"the central directory is unreadable: {damage}")


def _zip_layout(fp: IO[bytes]) -> _Layout:
    """Find the central directory from the end records (zip64 too), as zipfile does."""
    size = fp.seek(0, io.SEEK_END)
    tail_start = max(0, size - _EOCD.size - 0xFFFF)
    fp.seek(tail_start)
    tail = fp.read()
    at = tail.rfind(b"PK\x05\x06", 0, len(tail) - _EOCD.size + 4)  # the last that fits
    if at < 0:
        raise InputError("corrupt_archive", "unreadable zip archive: no end of central "
                         "directory (truncated, or not a zip)", 422)
    _, disk, cd_disk, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    directory_end = tail_start + at
    locator_at = directory_end - _EOCD64_LOCATOR.size
    if locator_at >= _EOCD64.size:
        fp.seek(locator_at)
        signature, locator_disk, _, disks = _EOCD64_LOCATOR.unpack(fp.read(_EOCD64_LOCATOR.size))
        if signature == b"PK\x06\x07":
            fp.seek(locator_at - _EOCD64.size)
            record = _EOCD64.unpack(fp.read(_EOCD64.size))
            if record[0] != b"PK\x06\x06":
                raise InputError("corrupt_archive", "unreadable zip archive: bad zip64 end "
                                 "of central directory", 422)
            disk, cd_disk, cd_size, cd_offset = record[4], record[5], record[8], record[9]
            disk = disk or locator_disk or int(disks > 1)
            directory_end = locator_at - _EOCD64.size
    if disk or cd_disk:
        raise InputError("corrupt_archive", "zip archives split over several files (disks) "
                         "are not supported", 422)
    directory = directory_end - cd_size
    if directory < 0 or directory_end > size:
        raise InputError("corrupt_archive", "unreadable zip archive: the central directory "
                         "lies outside the file", 422)
    return _Layout(directory, directory_end, directory - cd_offset)


def _records(fp: IO[bytes], layout: _Layout) -> Iterator[_Record]:
    """Central directory records in order; raises _Damaged where one is unreadable."""
    at = layout.directory
    while at < layout.end:
        fp.seek(at)
        head = fp.read(_CENTRAL.size)
        if len(head) < _CENTRAL.size or head[:4] != b"PK\x01\x02":
            raise _Damaged(f"no directory record at byte {at}")
        (_, _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length,
         comment_length, _, _, attributes, offset) = _CENTRAL.unpack(head)
        variable = fp.read(name_length + extra_length)
        at += _CENTRAL.size + name_length + extra_length + comment_length
        if len(variable) < name_length + extra_length or at > layout.end:
            raise _Damaged(f"a directory record runs past the directory's end at byte {at}")
        raw, extra = variable[:name_length], variable[name_length:]
        if 0xFFFFFFFF in (size, compressed, offset):
            size, compressed, offset = _zip64_sizes(extra, size, compressed, offset)
        yield _Record(raw, extra, flags, method, crc, compressed, size, attributes, offset)


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        yield tag, extra[at + 4:at + 4 + length]
        at += 4 + length


def _zip64_sizes(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """The zip64 extra field's values for the fields the record left at 0xFFFFFFFF."""
    for tag, body in _extra_fields(extra):
        if tag == _ZIP64:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            try:
                if size == 0xFFFFFFFF:
                    size = values.pop(0)
                if compressed == 0xFFFFFFFF:
                    compressed = values.pop(0)
                if offset == 0xFFFFFFFF:
                    offset = values.pop(0)
            except IndexError:
                raise _Damaged("a zip64 extra field is too short") from None
            return size, compressed, offset
    raise _Damaged("a record needs a zip64 extra field and has none")


def _survey(fp: IO[bytes], layout: _Layout,
            budget: _Budget) -> tuple[int, np.ndarray, str | None]:
    """How many records are readable (up to one past the entries limit), which overlap
    another's data, and why the directory stops early (or None)."""
    starts, ends = array("q"), array("q")
    damage = None
    try:
        for record in _records(fp, layout):
            # The smallest extent an entry can have: its local header has the same name.
            start = min(record.offset, 1 << 62)
            starts.append(start)
            ends.append(min(start + _LOCAL.size + len(record.raw) + record.compressed, 1 << 62))
            if len(starts) > budget.limits.entries:
                break
            if len(starts) % 4096 == 0:
                budget.check()
    except _Damaged as exc:
        damage = str(exc)
    return len(starts), _overlaps(np.frombuffer(starts, np.int64),
                                  np.frombuffer(ends, np.int64)), damage


def _overlaps(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each range [start, end), whether another range starts inside it.

    Records that share one local header all fail; so does an entry whose (declared) data
    runs over the next entry's header, but not the entries it runs over: one liar cannot
    take honest entries down with it. In a chain of nested entries, only the innermost
    one is read.
    """
    flags = np.zeros(len(starts), bool)
    if len(starts) < 2:
        return flags
    order = np.argsort(starts, kind="stable")
    first, last = starts[order], ends[order]
    hit = np.zeros(len(order), bool)
    hit[:-1] = first[1:] < last[:-1]  # the next start (the nearest one) lies inside
    hit[1:] |= first[1:] == first[:-1]  # an earlier record has the same start
    flags[order] = hit
    return flags


def _zip_name(record: _Record) -> tuple[str, bytes | None]:
    """The name (Info-ZIP Unicode Path field if its CRC matches, else UTF-8, else the most
    plausible legacy encoding; the UTF-8 flag is not trusted) and the raw bytes if not UTF-8."""
    try:
        record.raw.decode("utf-8")
        raw_name = None
    except UnicodeDecodeError:
        raw_name = record.raw
    for tag, body in _extra_fields(record.extra):
        if tag == _UNICODE_PATH and len(body) > 5 and body[0] == 1 \
                and int.from_bytes(body[1:5], "little") == zlib.crc32(record.raw):
            try:
                return clean_text(body[5:].decode("utf-8")), raw_name
            except UnicodeDecodeError:
                break
    return clean_text(readable_name(record.raw, ZIP_LEGACY)), raw_name


def _zip_member(fp: IO[bytes], layout: _Layout, record: _Record, overlapping: bool,
                budget: _Budget) -> ArchiveEntry | None:
    name, raw_name = _zip_name(record)
    if name.endswith("/") or is_os_metadata(name):
        return None
    unsafe = _unsafe(name, raw_name)
    if unsafe:
        return unsafe
    if (record.attributes >> 16) & 0o170000 == 0o120000:
        return _failed(name, "unsupported_entry", "is a link", raw_name)
    if record.flags & _ENCRYPTED or record.method == 99:
        return _failed(name, "unsupported_entry", "is encrypted", raw_name)
    if record.method not in (_STORED, _DEFLATED, _BZIP2, _LZMA):
        method = _OTHER_METHODS.get(record.method, "unknown")
        return _failed(name, "unsupported_entry", f"uses compression method {record.method} "
                       f"({method}); stored, deflate, bzip2 and LZMA are read", raw_name)
    limit = budget.limits.entry_bytes
    if record.size > limit:
        return _too_large(name, record.size, limit, raw_name)
    if overlapping:
        return _failed(name, "corrupt_archive", "overlaps another entry (a zip bomb's trick)",
                       raw_name)
    try:
        data = _zip_data(fp, layout, record, budget)
    except _Damaged as exc:
        return _failed(name, "corrupt_archive", str(exc), raw_name)
    return ArchiveEntry(name, data=data, raw_name=raw_name)


def _zip_data(fp: IO[bytes], layout: _Layout, record: _Record, budget: _Budget) -> bytes:
    """The member's bytes, inflating at most one byte more than its header declares."""
    fp.seek(layout.shift + record.offset)
    head = fp.read(_LOCAL.size)
    if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
        raise _Damaged("has no local header where the directory says")
    name_length, extra_length = _LOCAL.unpack(head)[-2:]
    start = layout.shift + record.offset + _LOCAL.size + name_length + extra_length
    if start + record.compressed > layout.directory:
        raise _Damaged("has data running past the end of the archive's data")
    fp.seek(start)
    source = _Slice(fp, record.compressed)
    decompressor = _decompressor(record.method, source, record.size)
    out, produced, crc = _sized_buffer(record.size), 0, 0
    while not decompressor.eof:
        budget.check()
        data = source.read(_IN_CHUNK) if decompressor.needs_input else b""
        if decompressor.needs_input and not data:
            break
        try:
            piece = decompressor.decompress(data, min(_OUT_CHUNK, record.size + 1 - produced))
        except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as exc:
            raise _Damaged(f"has damaged compressed data ({exc})") from None
        produced += len(piece)
        budget.inflate(len(piece))
        if produced > record.size:
            raise _Damaged(f"inflates to more than the {record.size:,} bytes its header "
                           f"declares")
        crc = zlib.crc32(piece, crc)
        out.write(piece)
    if produced < record.size:
        raise _Damaged(f"is truncated: {produced:,} of {record.size:,} bytes")
    if crc != record.crc:
        raise _Damaged("fails its CRC check (the data is damaged)")
    return out.getvalue()


def _sized_buffer(size: int) -> io.BytesIO:
    """A buffer allocated once at ``size`` (the size is checked first, against entry_bytes):
    growing one by appends would copy it (and hold two) each time realloc moves it, and
    ``getvalue()`` of a buffer written exactly full hands out its bytes without a copy."""
    out = io.BytesIO()
    if size:
        out.seek(size - 1)
        out.write(b"\0")
        out.seek(0)
    return out


class _Slice:
    """``length`` bytes of ``fp`` from where it stands."""

    def __init__(self, fp: IO[bytes], length: int) -> None:
        self.fp, self.left = fp, length

    def read(self, size: int) -> bytes:
        data = self.fp.read(min(size, self.left))
        self.left -= len(data)
        if size and self.left and not data:
            raise _Damaged("is truncated")
        return data


class _Stored:
    """The decompressor interface of bz2/lzma for stored data."""

    eof = False

    def __init__(self) -> None:
        self.needs_input, self._left = True, b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        data = self._left + data
        self._left = data[max_length:]
        self.needs_input = not self._left
        return data[:max_length]


class _Inflate:
    """zlib's raw deflate with the decompressor interface of bz2/lzma."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._inflate.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._inflate.decompress(self._inflate.unconsumed_tail + data, max_length)
        # A full output may leave output pending inside zlib even with all input consumed.
        self.needs_input = not self._inflate.unconsumed_tail and len(out) < max_length
        return out


def _decompressor(method: int, source: _Slice, size: int):
    if method == _STORED:
        return _Stored()
    if method == _DEFLATED:
        return _Inflate()
    if method == _BZIP2:
        return bz2.BZ2Decompressor()
    # LZMA in zip: version (2 bytes), properties size (2), LZMA1 properties, raw stream.
    head = source.read(4)
    properties = source.read(int.from_bytes(head[2:4], "little")) if len(head) == 4 else b""
    if len(properties) != 5 or properties[0] >= 9 * 5 * 5:
        raise _Damaged("has no valid LZMA properties")
    lc, lp, pb = properties[0] % 9, properties[0] // 9 % 5, properties[0] // 45
    # No match reaches further back than the output so far, which stops at size + 1: a
    # larger dictionary than that (up to 4 GiB declared) would be memory for nothing.
    dict_size = max(4096, min(int.from_bytes(properties[1:5], "little"), size + 1))
    try:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
            "id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}])
    except (lzma.LZMAError, ValueError) as exc:
        raise _Damaged(f"has invalid LZMA properties ({exc})") from None


# -- tar ---------------------------------------------------------------------------------
def _tar_entries(stream: IO[bytes], budget: _Budget,
                 gzipped: bool) -> Generator[ArchiveEntry, None, None]:
    source = _TarStream(stream, budget, gzipped)
    try:  # tarfile only reads, seeks and tells: _TarStream has no write nor close
        archive = tarfile.TarFile(fileobj=cast(IO[bytes], source), mode="r", encoding="utf-8",
                                  errors="surrogateescape")
    except (_Damaged, tarfile.TarError, OSError, EOFError) as exc:
        kind = "tar.gz" if gzipped else "tar"
        raise InputError("corrupt_archive", f"unreadable {kind} archive: {exc}", 422) from None
    with archive:
        while True:
            source.mark()
            try:
                member = archive.next()
            except (tarfile.TarError, OSError, EOFError, _Damaged) as exc:
                yield _rest_damaged(exc)
                return
            # tarfile keeps every TarInfo otherwise (an attribute typeshed does not declare)
            archive.members.clear()  # type: ignore[attr-defined]
            if member is None:
                if source.last.strip(b"\0"):  # stopped at a header that is not the end
                    yield _rest_damaged("an invalid header")
                return
            budget.record()
            try:
                entry = _tar_member(archive, member, source, budget.limits)
            except (tarfile.TarError, OSError, EOFError, _Damaged) as exc:
                name = clean_text(member.name)
                yield _failed(name, "corrupt_archive", f"is damaged, and so is the rest of "
                              f"the archive: {exc}", escaped_bytes(member.name))
                return
            if entry is not None:
                yield entry
            del entry


def _tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, source: _TarStream,
                limits: ArchiveLimits) -> ArchiveEntry | None:
    name, raw_name = clean_text(member.name), escaped_bytes(member.name)
    if member.isdir() or is_os_metadata(name):
        return None
    if member.issym() or member.islnk():
        return _failed(name, "unsupported_entry", "is a link", raw_name)
    if not member.isfile():
        return _failed(name, "unsupported_entry", "is not a regular file", raw_name)
    unsafe = _unsafe(name, raw_name)
    if unsafe:
        return unsafe
    if member.size > limits.entry_bytes:
        return _too_large(name, member.size, limits.entry_bytes, raw_name)
    fh = archive.extractfile(member)
    out = _sized_buffer(member.size)
    while fh is not None and out.tell() < member.size:
        source.mark()
        chunk = fh.read(min(_OUT_CHUNK, member.size - out.tell()))
        if not chunk:
            raise _Damaged("the archive ends inside it")
        out.write(chunk)
    return ArchiveEntry(name, data=out.getvalue(), raw_name=raw_name)


class _TarStream:
    """The tar bytes for tarfile, inflated from gzip if need be, under the budget.

    Every byte handed out (or inflated only to be skipped) counts in ``archive_bytes``, and
    CPU is checked on every read. One header may not read more than ``_HEADER_WINDOW`` bytes
    (tarfile reads a pax or long-name header whole, whatever size it declares). Skipping
    forward is a seek when the tar is uncompressed and costs nothing; gzip is inflated.
    """

    def __init__(self, raw: IO[bytes], budget: _Budget, gzipped: bool) -> None:
        self.raw, self.budget, self.gzipped = raw, budget, gzipped
        self.position = 0
        self.window = 0  # bytes handed out since mark()
        self.last = b""  # the last read's bytes (the header a stop was decided on)
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""
        self._ended = False

    def mark(self) -> None:
        self.window = 0

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = _HEADER_WINDOW + 1 if size is None or size < 0 else size
        if self.window + size > max(_HEADER_WINDOW, _OUT_CHUNK):
            raise _Damaged(f"a header of more than {_HEADER_WINDOW:,} bytes")
        data = self._take(size)
        self.window += len(data)
        self.last = data
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self.position if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target < 0:
            raise io.UnsupportedOperation("tar streams seek from the start or forward")
        if not self.gzipped:
            self.position = self.raw.seek(target)
            return self.position
        if target < self.position:
            raise io.UnsupportedOperation("gzip data cannot seek backward")
        while self.position < target and self._take(min(_OUT_CHUNK, target - self.position)):
            pass
        return self.position

    def _take(self, size: int) -> bytes:
        if not self.gzipped:
            data = self.raw.read(size)
            self.budget.inflate(len(data))
            self.position += len(data)
            return data
        pieces, got = [], 0
        while got < size and not self._ended:
            piece = self._inflated(size - got)
            self.budget.inflate(len(piece))
            pieces.append(piece)
            got += len(piece)
        self.position += got
        return b"".join(pieces)

    def _inflated(self, size: int) -> bytes:
        """Up to ``size`` bytes more (maybe none); sets _ended at the end of the gzip data."""
        if self._inflate.eof:  # a gzip member ended: another may follow, or the end
            rest = self._inflate.unused_data or self.raw.read(_IN_CHUNK)
            if not rest.startswith(_GZIP_MAGIC):
                self._ended = True
                return b""
            self._inflate, self._input = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
        data = self._input or self.raw.read(_IN_CHUNK)
        try:
            piece = self._inflate.decompress(data, min(size, _OUT_CHUNK))
        except zlib.error as exc:
            raise _Damaged(f"the gzip data is damaged ({exc})") from None
        self._input = self._inflate.unconsumed_tail
        if not data and not piece and not self._inflate.eof:
            raise _Damaged("the gzip data is truncated")
        return piece
