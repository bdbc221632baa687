"""Bringing a job's results home: artifacts into an output folder as items finish.

Artifacts come over HTTP from the API, except where the storage is a folder on this machine
(``depthfleet run``'s default): then they are hard-linked out of it. A 12 MP photo's three
artifacts are about 60 MB, and the API would read, send, receive and write every byte of
them on the same cores that compute the next photos.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from depthfleet.outputs import OutputFolder, manifest_record, new_file_mode
from depthfleet.shared.artifacts import FULL_SIZE
from depthfleet.shared.jobs import JobStore, connect
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import FileStorage, open_storage

if TYPE_CHECKING:  # the client builds its download_results on this module
    from depthfleet.client import Client, ItemInfo, JobInfo

ITEM_STATES_DONE = ("succeeded", "failed", "cancelled")
PAGE = 1000


class StoredArtifacts:
    """Finds a job's artifacts in a ``file://`` storage through the job store's records."""

    def __init__(self, storage: FileStorage, store: JobStore) -> None:
        self.storage, self.store = storage, store

    @classmethod
    def open(cls, settings: Settings) -> StoredArtifacts | None:
        """For the storage and Redis of ``settings``; None unless the storage is a folder."""
        storage = open_storage(settings)
        if not isinstance(storage, FileStorage) or not settings.redis_url:
            return None
        return cls(storage, JobStore(connect(settings.redis_url), settings.job_ttl_days * 86400))

    def path(self, job_id: str, index: int, artifact: str) -> Path | None:
        record = self.store.item(job_id, index) or {}
        key = (record.get("artifacts") or {}).get(artifact)
        return self.storage.local_path(key) if key else None


def link_artifact(folder: OutputFolder, name: str, artifact: str, source: Path) -> str:
    """Put ``source`` at the artifact's place in ``folder`` (atomically), as a hard link.

    Storage never rewrites a file in place (it writes a new one and renames it), so sharing
    the inode is safe; across file systems the bytes are copied by the kernel instead. The
    file gets the mode of a new file under the user's umask, like every file OUT gets.
    """
    rel = folder.artifact_path(name, artifact)
    target = folder.root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mktemp(dir=target.parent, prefix=".tmp-"))
    mode = new_file_mode()
    try:
        os.link(source, temporary)
        if temporary.stat().st_mode & 0o777 != mode:
            os.chmod(temporary, mode)  # storage writes 0600; the link is OUT's file as well
    except OSError:  # another file system, one without hard links, or another's file
        temporary.unlink(missing_ok=True)
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)
    return rel


class Collector:
    """Polls a job and writes each finished item's artifacts and manifest line exactly once."""

    def __init__(self, client: Client, job_id: str, folder: OutputFolder,
                 local_name: Callable[[ItemInfo], str], workers: int = 4,
                 stored: StoredArtifacts | None = None, outputs: Sequence[str] = FULL_SIZE,
                 max_side: int | None = None) -> None:
        self.client, self.job_id, self.folder = client, job_id, folder
        self.local_name = local_name
        self.stored = stored
        self.outputs, self.max_side = tuple(outputs), max_side
        self.collected: set[int] = set()
        self.failed = 0
        self.pool = ThreadPoolExecutor(workers)

    def run(self, interval: float = 0.5, desc: str = "depth", progress: bool = True,
            on_poll: Callable[[], None] | None = None) -> JobInfo:
        """Collect until the job is finished and every item is written; returns its final
        status. ``on_poll`` runs after every poll (e.g. to fail fast when a local worker died).
        """
        if not self.folder.stems:
            names = (self.local_name(item) for item in self.client.iter_items(self.job_id))
            self.folder.set_names(names)
        with tqdm(desc=desc, unit="img", dynamic_ncols=True, disable=not progress) as bar:
            for status in self.client.watch(self.job_id, interval):
                bar.total = status["total"]
                if self._finished(status) > len(self.collected):  # else nothing new to list
                    bar.update(self._sweep(status["total"]))
                bar.set_postfix(failed=self.failed)
                if on_poll:
                    on_poll()
            # Finished: what the last sweeps had no room for (5 pages a sweep).
            while len(self.collected) < status["total"] and (swept := self._sweep(status["total"])):
                bar.update(swept)
        return status

    @staticmethod
    def _finished(status: JobInfo) -> int:
        return status["succeeded"] + status["failed"] + status["cancelled"]

    def _sweep(self, total: int) -> int:
        """Collect finished items from the first uncollected one on; returns how many."""
        offset = next((i for i in range(total) if i not in self.collected), total)
        done = [item for page_start in range(offset, min(total, offset + 5 * PAGE), PAGE)
                for item in self.client.items(self.job_id, page_start, PAGE)["items"]
                if item["status"] in ITEM_STATES_DONE and item["index"] not in self.collected]
        for _ in self.pool.map(self._collect, done):
            pass
        return len(done)

    def _collect(self, item: ItemInfo) -> None:
        name = self.local_name(item)
        if self.folder.is_done(name):  # a resumed run already has it
            self.collected.add(item["index"])
            return
        artifacts = {}
        if item["status"] == "succeeded":
            for artifact in self.outputs:
                if artifact in item["artifacts"]:
                    artifacts[artifact] = self._save(name, item["index"], artifact,
                                                     item["artifacts"][artifact])
        else:
            self.failed += 1
        summary = {k: item.get(k) for k in ("width", "height", "depth_min", "depth_max")}
        self.folder.record(manifest_record(item["index"], name, item["status"],
                                           error=item.get("error"), summary=summary,
                                           artifacts=artifacts))
        self.collected.add(item["index"])

    def _save(self, name: str, index: int, artifact: str, url: str) -> str:
        """Link the stored file if it is here at the size wanted; else download it (the
        API renders full-size artifacts of compact results on read)."""
        source = self.stored.path(self.job_id, index, artifact) if self.stored else None
        if source is None or self.max_side is not None:
            if self.max_side is not None:
                url = f"{url}{'&' if '?' in url else '?'}max_side={self.max_side}"
            return self.folder.write_artifact(name, artifact, self.client.download(url))
        return link_artifact(self.folder, name, artifact, source)
