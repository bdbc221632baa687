"""The output folder of ``predict``, ``run`` and ``fetch``: artifacts per input plus a manifest.

Layout: ``OUT/<relative path minus extension>.<artifact filename>`` (``photo.depth.png``,
``photo.depth_raw.tiff``, ...) and ``OUT/manifest.jsonl``, one line per input in input
order. Inputs whose paths differ only by extension (``cat.jpg``, ``cat.heic``) would overwrite
each other, so those keep their extension (``cat.jpg.depth.png``, ``cat.heic.depth.png``).
Lines are appended as items finish, so an interrupted run keeps its progress and a rerun
skips every input whose line says succeeded and whose artifacts are on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthfleet.shared.artifacts import ARTIFACTS, COMPACT, FULL_SIZE, check_names

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp",
                  ".gif", ".heic", ".heif"}


def chosen_outputs(text: str, full_size_only: bool = False) -> tuple[str, ...]:
    """``--outputs a,b`` -> artifact names in catalog order; ValueError listing the known ones.

    ``depth_raw`` alone means the whole compact set: the previews are what a folder of
    results is browsed by, and cost little beside it. Names given otherwise are taken exactly.
    """
    known = FULL_SIZE if full_size_only else tuple(ARTIFACTS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        what = f"unknown {', '.join(unknown)}" if unknown else "no outputs named"
        raise ValueError(f"{what} (known: {', '.join(known)})")
    return COMPACT if names == ["depth_raw"] else check_names(names)


@dataclass(frozen=True)
class Input:
    """A local input file and the name it has in outputs (its path relative to the input root)."""

    path: Path
    name: str


def find_inputs(paths: Iterable[Path]) -> list[Input]:
    """Files named directly are taken as they are; folders contribute their images, sorted."""
    found: list[Input] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.relative_to(path)
                if file.suffix.lower() in IMAGE_SUFFIXES and not _hidden(rel):
                    found.append(Input(file, rel.as_posix()))
        elif path.is_file():
            found.append(Input(path, path.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _strip_extension(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in Path(name).name else name


def output_stems(names: Iterable[str]) -> dict[str, str]:
    """Each input name's artifact stem: the name minus extension, unless that collides."""
    names = list(names)
    counts = Counter(_strip_extension(n) for n in names)
    return {n: _strip_extension(n) if counts[_strip_extension(n)] == 1 else n for n in names}


def artifact_file(stems: dict[str, str], name: str, artifact: str) -> str:
    """``a/b.jpg`` + ``depth_png`` -> ``a/b.depth.png``: where an input's artifact goes."""
    stem = stems.get(name) or _strip_extension(name)
    return f"{stem}.{ARTIFACTS[artifact].filename}"


def relative_names(names: Iterable[str]) -> list[str]:
    """Item names made safe, distinct relative paths, for files written from a job's items
    (``results.zip``): a URL loses its scheme (``s3://b/a.jpg`` -> ``b/a.jpg``), empty, ``.``
    and ``..`` parts go, and a name that repeats gets its position before the extension
    (the second ``a.jpg`` of a batch: ``a~1.jpg``), so no file overwrites another."""
    seen: set[str] = set()
    found = []
    for position, name in enumerate(names):
        path = name.split("://", 1)[-1].replace("\\", "/").replace("\0", "")
        safe = "/".join(p for p in path.split("/") if p not in ("", ".", "..")) or "item"
        while safe in seen:
            stem, dot, ext = safe.rpartition(".") if "." in Path(safe).name else (safe, "", "")
            safe = f"{stem}~{position}{dot}{ext}"
        seen.add(safe)
        found.append(safe)
    return found


def artifact_beside(rel: str, artifact: str) -> str:
    """The path of ``artifact`` with the stem of the artifact file at ``rel``
    (``a/b.depth_raw.tiff`` -> ``a/b.depth.png``): where to put what is drawn from it."""
    for spec in ARTIFACTS.values():
        if rel.endswith(f".{spec.filename}"):
            return rel.removesuffix(spec.filename) + ARTIFACTS[artifact].filename
    raise ValueError(f"{rel} is not named like an artifact")


class OutputFolder:
    """Writes artifacts and manifest lines; knows which inputs are already done."""

    def __init__(self, root: Path, names: Iterable[str] = ()) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = root / MANIFEST
        self.records: dict[str, dict[str, Any]] = dict(self._read_manifest())
        self.stems = output_stems(names)

    def set_names(self, names: Iterable[str]) -> None:
        """Every input name of the run, so colliding stems can be told apart."""
        self.stems = output_stems(names)

    def artifact_path(self, name: str, artifact: str) -> str:
        """``a/b.jpg`` + ``depth_png`` -> ``a/b.depth.png`` (relative to OUT)."""
        return artifact_file(self.stems, name, artifact)

    def _read_manifest(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.manifest.exists():
            return
        for line in self.manifest.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            yield record["name"], record

    def is_done(self, name: str) -> bool:
        record = self.records.get(name)
        return bool(record) and record["status"] == "succeeded" and all(
            (self.root / rel).is_file() for rel in record["artifacts"].values())

    def write_artifact(self, name: str, artifact: str, data: bytes | bytearray) -> str:
        return self.write_file(self.artifact_path(name, artifact), data)

    def write_file(self, rel: str, data: bytes | bytearray) -> str:
        """Write ``data`` at ``rel`` (relative to OUT) atomically; returns ``rel``."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)
        return rel

    def record(self, record: dict[str, Any]) -> None:
        """Remember one finished input and append its line (durable progress)."""
        self.records[record["name"]] = record
        with self.manifest.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def failures(self) -> list[dict[str, Any]]:
        """The records of inputs whose latest outcome is a failure."""
        return [r for r in self.records.values() if r["status"] == "failed"]

    def finalize(self, order: list[str]) -> None:
        """Rewrite the manifest: one line per input, in input order, latest outcome only."""
        lines = [json.dumps({**self.records[name], "index": i})
                 for i, name in enumerate(order) if name in self.records]
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.manifest)


def manifest_record(index: int, name: str, status: str, error: dict[str, str] | None = None,
                    summary: dict[str, Any] | None = None,
                    artifacts: dict[str, str] | None = None) -> dict[str, Any]:
    """A manifest line with the fields of an API item; artifacts are paths relative to OUT."""
    summary = summary or {}
    return {
        "index": index, "name": name, "status": status,
        "width": summary.get("width"), "height": summary.get("height"), "error": error,
        "depth_min": summary.get("depth_min"), "depth_max": summary.get("depth_max"),
        "artifacts": artifacts or {},
    }
