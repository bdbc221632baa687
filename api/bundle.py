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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from depthfleet.outputs import artifact_file, output_stems, relative_names
from depthfleet.shared.artifacts import ARTIFACTS
from depthfleet.shared.jobs import JobStatus, JobStore
from depthfleet.shared.storage import ObjectMissing, Storage

FAILURES = "failures.json"  # never an artifact's name: those all end in .<artifact filename>
PRECOMPRESSED = frozenset({"image/png", "image/jpeg", "image/tiff"})  # stored, not deflated
NOT_DONE = {
    "cancelled": {"code": "cancelled", "message": "the job was cancelled before this item ran"},
    "queued": {"code": "not_finished", "message": "the item was still queued"},
    "running": {"code": "not_finished", "message": "the item was still running"},
}


@dataclass(frozen=True)
class Member:
    """One file of the archive: its path and how to open its bytes (None: it is gone, and
    the archive goes on without it)."""

    path: str
    open: Callable[[], Iterable[bytes] | None]
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


def zip_stream(members: Iterable[Member], when: float) -> Iterator[bytes]:
    """The ZIP of ``members``, in pieces as they are written (entries dated ``when``)."""
    sink = _Sink()
    date_time = time.gmtime(max(when, 315532800))[:6]  # ZIP dates start in 1980
    with zipfile.ZipFile(sink, "w") as archive:
        for member in members:
            chunks = member.open()
            if chunks is None:
                continue
            info = zipfile.ZipInfo(member.path, date_time)
            info.compress_type = zipfile.ZIP_DEFLATED if member.compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as entry:
                for chunk in chunks:
                    entry.write(chunk)
                    if piece := sink.take():
                        yield piece
            yield sink.take()
    yield sink.take()


class JobFiles:
    """The members of one job's archive: each succeeded item's ``outputs``, then
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

    def members(self) -> Iterator[Member]:
        indexes, names = [], []
        for record in self.store.iter_items(self.status.id, self.status.total):
            indexes.append(record["index"])
            names.append(record["name"])
        paths = dict(zip(indexes, relative_names(names)))
        del names
        stems = output_stems(paths.values())
        for record in self.store.iter_items(self.status.id, self.status.total):
            if record["status"] == "succeeded":
                yield from self._item_members(record, paths[record["index"]], stems)
        if self.status.total > self.status.succeeded or self.missing:
            yield Member(FAILURES, lambda: self._failures(), compress=True)

    def _item_members(self, record: dict[str, Any], path: str,
                      stems: dict[str, str]) -> Iterator[Member]:
        offered = self.offered(record)
        for name in self.outputs:
            if name in offered:
                yield Member(artifact_file(stems, path, name),
                             lambda record=record, name=name: self._open(record, name),
                             compress=ARTIFACTS[name].content_type not in PRECOMPRESSED)

    def _open(self, record: dict[str, Any], name: str) -> Iterable[bytes] | None:
        """The artifact's bytes from storage (full-size ones rendered on read first)."""
        try:
            return self.storage.stream(self.key_for(record, name)).chunks
        except ObjectMissing:
            self.missing.append({"index": record["index"], "name": record["name"],
                                 "status": "succeeded", "error": {
                                     "code": "artifact_missing",
                                     "message": f"{name} is no longer in storage"}})
            return None

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
