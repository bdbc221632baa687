"""Bringing a job's results home: artifacts into an output folder as items finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from depthfleet.client import TERMINAL_JOB_STATES, Client
from depthfleet.outputs import OutputFolder, manifest_record

ITEM_STATES_DONE = ("succeeded", "failed", "cancelled")
PAGE = 1000


class Collector:
    """Polls a job and writes each finished item's artifacts and manifest line exactly once."""

    def __init__(self, client: Client, job_id: str, folder: OutputFolder,
                 local_name: Callable[[dict[str, Any]], str], workers: int = 4) -> None:
        self.client, self.job_id, self.folder = client, job_id, folder
        self.local_name = local_name
        self.collected: set[int] = set()
        self.failed = 0
        self.pool = ThreadPoolExecutor(workers)

    def run(self, interval: float = 0.5, desc: str = "depth",
            on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
        """Collect until the job is finished; returns its final status.

        ``on_poll`` runs before every poll (e.g. to fail fast when a local worker died).
        """
        status = self.client.status(self.job_id)
        if not self.folder.stems:
            self.folder.set_names(self.local_name(item) for item in self.client.iter_items(self.job_id))
        with tqdm(total=status["total"], desc=desc, unit="img", dynamic_ncols=True) as bar:
            while True:
                if on_poll:
                    on_poll()
                status = self.client.status(self.job_id)
                finished = status["pending"] == 0 and status["status"] in TERMINAL_JOB_STATES
                bar.update(self._sweep(status["total"]))
                bar.set_postfix(failed=self.failed)
                if finished and len(self.collected) >= status["total"]:
                    return status
                time.sleep(interval)

    def _sweep(self, total: int) -> int:
        """Collect finished items from the first uncollected one on; returns how many."""
        offset = next((i for i in range(total) if i not in self.collected), total)
        done = [item for page_start in range(offset, min(total, offset + 5 * PAGE), PAGE)
                for item in self.client.items(self.job_id, page_start, PAGE)["items"]
                if item["status"] in ITEM_STATES_DONE and item["index"] not in self.collected]
        for _ in self.pool.map(self._collect, done):
            pass
        return len(done)

    def _collect(self, item: dict[str, Any]) -> None:
        name = self.local_name(item)
        if self.folder.is_done(name):  # a resumed run already has it
            self.collected.add(item["index"])
            return
        artifacts = {}
        if item["status"] == "succeeded":
            for artifact, url in item["artifacts"].items():
                artifacts[artifact] = self.folder.write_artifact(name, artifact,
                                                                 self.client.download(url))
        else:
            self.failed += 1
        summary = {k: item.get(k) for k in ("width", "height", "depth_min", "depth_max")}
        self.folder.record(manifest_record(item["index"], name, item["status"],
                                           error=item.get("error"), summary=summary,
                                           artifacts=artifacts))
        self.collected.add(item["index"])
