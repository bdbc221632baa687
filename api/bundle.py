"""``results.zip``: a job's files as one ZIP, written while they are read from storage.

Memory stays flat whatever the job's size: ``zipfile`` writes onto a write-only sink (so
each entry ends with a data descriptor instead of a seek back to its header) and every piece
is sent as soon as it is written. What grows with the job is small: the central directory
(about 100 bytes per file, written last, as ZIP requires) and the items' names (files are
named like ``depthfleet run``/``fetch`` name them, which needs every name to tell apart
stems that collide).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from depthfleet.outputs import artifact_file, output_stems, relative_names
from depthfleet.shared.artifacts import ARTIFACTS
from depthfleet.shared.jobs import JobStatus, JobStore
from depthfleet.shared.storage import ObjectMissing, Storage

FAILURES = "failures.json"  # never an artifact's name: those all end in .<artifact filename>
OPEN_AHEAD = 8  # storage reads in flight per archive being sent (S3: ~20 ms each)
PRECOMPRESSED = frozenset({"image/png", "image/jpeg", "image/tiff"})  # stored, not deflated
NOT_DONE = {
    "cancelled": {"code": "cancelled", "message": "the job was cancelled before this item ran"},
    "queued": {"code": "not_finished", "message": "the item was still queued"},
    "running": {"code": "not_finished", "message": "the item was still running"},
}


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its path and its bytes, in pieces."""

    path: str
    chunks: Iterable[bytes]
    compress: bool


class _Sink(io.RawIOBase):
    """Write-only and unseekable, so ``zipfile`` streams; ``take`` hands over what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


def zip_stream(entries: Iterable[Entry], when: float) -> Iterator[bytes]:
    """The ZIP of ``entries``, in pieces as they are written (entries dated ``when``)."""
    sink = _Sink()
    date_time = time.gmtime(max(when, 315532800))[:6]  # ZIP dates start in 1980
    with zipfile.ZipFile(sink, "w") as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.path, date_time)
            info.compress_type = zipfile.ZIP_DEFLATED if entry.compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as out:
                for chunk in entry.chunks:
                    out.write(chunk)
                    if piece := sink.take():
                        yield piece
            yield sink.take()
    yield sink.take()


Opener = Callable[[], "Iterable[bytes] | None"]


def opened_ahead(files: Iterable[tuple[str, Opener, bool]], ahead: int) -> Iterator[Entry]:
    """``files`` (path, opener, compress) as entries, opened ``ahead`` at a time (greenlets
    under gunicorn's gevent): one storage round trip per file, one after the other, would
    bound the archive's speed (10,000 files at 20 ms: over 3 minutes). An opener that
    returns None (the file is gone) drops its file."""
    with ThreadPoolExecutor(ahead, thread_name_prefix="zip-open") as pool:
        window: deque[tuple[str, Future, bool]] = deque()
        for path, opener, compress in files:
            window.append((path, pool.submit(opener), compress))
            while len(window) >= ahead or (window and window[0][1].done()):
                yield from _entry(*window.popleft())
        while window:
            yield from _entry(*window.popleft())


def _entry(path: str, future: Future, compress: bool) -> Iterator[Entry]:
    chunks = future.result()
    if chunks is not None:
        yield Entry(path, chunks, compress)


class JobFiles:
    """The entries of one job's archive: each succeeded item's ``outputs``, then
    ``failures.json`` listing every item without files (and why), if there is one."""

    def __init__(self, store: JobStore, storage: Storage, status: JobStatus,
                 outputs: Iterable[str], key_for: Callable[[dict[str, Any], str], str],
                 offered: Callable[[dict[str, Any]], list[str]]) -> None:
        """``key_for(record, name)``: the storage key of an item's artifact (rendering it if
        need be; ``ObjectMissing`` if it cannot be had); ``offered(record)``: its artifacts."""
        self.store, self.storage, self.status = store, storage, status
        self.outputs = tuple(outputs)
        self.key_for, self.offered = key_for, offered
        self.missing: list[dict[str, Any]] = []  # artifacts gone from storage meanwhile

    def entries(self, ahead: int = OPEN_AHEAD) -> Iterator[Entry]:
        yield from opened_ahead(self._files(), ahead)
        if self.status.total > self.status.succeeded or self.missing:
            yield Entry(FAILURES, self._failures(), compress=True)

    def _files(self) -> Iterator[tuple[str, Opener, bool]]:
        indexes, names = [], []
        for record in self.store.iter_items(self.status.id, self.status.total):
            indexes.append(record["index"])
            names.append(record["name"])
        paths = dict(zip(indexes, relative_names(names)))
        del names
        stems = output_stems(paths.values())
        for record in self.store.iter_items(self.status.id, self.status.total):
            if record["status"] == "succeeded":
                yield from self._item_files(record, paths[record["index"]], stems)

    def _item_files(self, record: dict[str, Any], path: str,
                    stems: dict[str, str]) -> Iterator[tuple[str, Opener, bool]]:
        """Keys are found (and full-size files rendered) here, in the request's context;
        only reading the bytes runs ahead."""
        offered = self.offered(record)
        for name in self.outputs:
            if name not in offered:
                continue
            try:
                key = self.key_for(record, name)
            except ObjectMissing:
                self._gone(record, name)
                continue
            compress = ARTIFACTS[name].content_type not in PRECOMPRESSED
            yield artifact_file(stems, path, name), partial(self._open, key, record, name), \
                compress

    def _open(self, key: str, record: dict[str, Any], name: str) -> Iterable[bytes] | None:
        try:
            return self.storage.stream(key).chunks
        except ObjectMissing:
            self._gone(record, name)
            return None

    def _gone(self, record: dict[str, Any], name: str) -> None:
        self.missing.append({"index": record["index"], "name": record["name"],
                             "status": "succeeded", "error": {
                                 "code": "artifact_missing",
                                 "message": f"{name} is no longer in storage"}})

    def _failures(self) -> Iterator[bytes]:
        """A JSON array, an item per line, read from the job store a page at a time."""
        first = True
        for entry in self._without_files():
            yield (b"[\n" if first else b",\n") + json.dumps(entry).encode()
            first = False
        yield b"[]\n" if first else b"\n]\n"

    def _without_files(self) -> Iterator[dict[str, Any]]:
        for record in self.store.iter_items(self.status.id, self.status.total):
            if record["status"] != "succeeded":
                yield {"index": record["index"], "name": record["name"],
                       "status": record["status"],
                       "error": record.get("error") or NOT_DONE.get(record["status"])}
        yield from self.missing
