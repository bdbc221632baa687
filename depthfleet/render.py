"""``depthfleet render``: full-size files drawn from the compact results in an output folder.

``predict``, ``run`` or ``fetch`` with ``--outputs depth_raw`` keep what the network computed
plus two previews, a few hundred KB per photo. This draws ``depth.png``, ``depth.pfm`` and
``heatmap.png`` from them when they are wanted, by ``render_full_size`` like the API and the
workers, so the bytes are those ``predict`` writes. No model runtime is loaded, and NumPy,
OpenCV and the PNG deflater release the GIL, so a few threads keep the cores busy.

Resumable like ``predict``: a record is done when the manifest lists every asked-for file and
it is on disk (whatever size it was drawn at), and each record's line is appended as soon as
its files are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from depthfleet.outputs import OutputFolder, artifact_beside
from depthfleet.shared.artifacts import raw_depth, render_full_size
from depthfleet.shared.depth import finite_range


@dataclass
class RenderReport:
    """What a render did: records drawn, records already complete, and why others failed."""

    rendered: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def render_folder(root: Path, names: Sequence[str], max_side: int | None,
                  threads: int) -> RenderReport:
    """Draw ``names`` beside every succeeded record's depth_raw in ``root``, where missing.

    Failed records are left alone; a succeeded one that cannot be drawn (no depth_raw, or
    an unreadable one) keeps its record and is reported.
    """
    folder = OutputFolder(root)
    report = RenderReport()
    todo: list[tuple[dict[str, Any], list[str]]] = []
    for record in folder.records.values():
        if record["status"] == "succeeded":
            missing = _missing(folder, record, names)
            if missing:
                todo.append((record, missing))
            else:
                report.skipped += 1
    pool = ThreadPoolExecutor(max(1, threads))
    try:
        with tqdm(total=len(todo), desc="render", unit="img", dynamic_ncols=True) as bar:
            drawn = pool.map(lambda job: _drawn(folder, job[0], job[1], max_side), todo)
            for record, error in drawn:
                if error is None:
                    folder.record(record)
                    report.rendered += 1
                else:
                    report.failures.append((record["name"], error))
                bar.update()
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C: stop after the images in flight
    folder.finalize([r["name"] for r in sorted(folder.records.values(), key=lambda r: r["index"])])
    return report


def _missing(folder: OutputFolder, record: dict[str, Any], names: Sequence[str]) -> list[str]:
    artifacts = record["artifacts"]
    return [name for name in names
            if name not in artifacts or not (folder.root / artifacts[name]).is_file()]


def _drawn(folder: OutputFolder, record: dict[str, Any], names: list[str],
           max_side: int | None) -> tuple[dict[str, Any], str | None]:
    """``record`` with ``names`` drawn and written beside its depth_raw, or it and why not.

    ``depth_min``/``depth_max`` become those of the map drawn, so the record describes the
    files beside it (they scale ``depth.png``), as ``predict --max-side`` would have written.
    """
    rel = record["artifacts"].get("depth_raw")
    if rel is None or not record.get("width") or not record.get("height"):
        return record, "no depth_raw and photo size to draw from (keep them: --outputs depth_raw)"
    try:
        raw = raw_depth((folder.root / rel).read_bytes(), record["width"], record["height"])
    except FileNotFoundError:
        return record, f"{rel} is missing"
    except ValueError as exc:
        return record, f"{rel} cannot be read as depth_raw ({exc})"
    depth = raw.at(max_side)
    drawn = {name: folder.write_file(artifact_beside(rel, name), blob)
             for name, blob in render_full_size(raw, names, max_side, depth).items()}
    low, high = finite_range(depth)
    return {**record, "depth_min": low, "depth_max": high,
            "artifacts": {**record["artifacts"], **drawn}}, None


