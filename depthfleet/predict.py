"""``depthfleet predict``: the whole pipeline in this process, no services (like MiDaS ``run.py``).

One image per core is in flight, each running the model on one thread: decoding, resizing
and encoding are serial per image, so splitting cores between images keeps every core busy
where splitting one image's model over them does not (docs/performance.md has the numbers).
Decoders, ONNX Runtime, NumPy and the PNG deflater release the GIL, so threads suffice.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from depthfleet.outputs import Input, OutputFolder, find_inputs, manifest_record
from depthfleet.shared.errors import InputError
from depthfleet.shared.artifacts import FULL_SIZE
from depthfleet.shared.memory import reuse_photo_buffers
from depthfleet.shared.pipeline import DepthEstimator, load_backend
from depthfleet.shared.render import render
from depthfleet.shared.settings import Settings


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class _Predictor:
    """Renders inputs into an output folder from several threads at once."""

    def __init__(self, folder: OutputFolder, estimator: DepthEstimator, settings: Settings,
                 max_side: int | None, outputs: list[str], options: Mapping[str, Any]) -> None:
        self.folder, self.estimator, self.settings = folder, estimator, settings
        self.max_side, self.outputs, self.options = max_side, outputs, options
        self._manifest_lock = threading.Lock()

    def __call__(self, job: tuple[int, Input]) -> bool:
        """Render one input, write its artifacts and manifest line; False if it failed."""
        index, inp = job
        try:
            rendered = render(inp.path.read_bytes(), self.estimator, self.outputs, self.max_side,
                              self.settings.max_pixels, self.options)
        except InputError as exc:
            self._record(manifest_record(index, inp.name, "failed", error=exc.to_dict()))
            return False
        artifacts = {name: self.folder.write_artifact(inp.name, name, blob)
                     for name, blob in rendered.artifacts.items()}
        self._record(manifest_record(index, inp.name, "succeeded", summary=rendered.summary(),
                                     artifacts=artifacts))
        return True

    def _record(self, record: dict[str, Any]) -> None:
        with self._manifest_lock:
            self.folder.record(record)


def predict(paths: list[Path], out: Path, settings: Settings, threads: int | None = None,
            max_side: int | None = None, outputs: list[str] | None = None,
            options: Mapping[str, Any] | None = None) -> int:
    """Process every input not already done in ``out``; returns how many failed this time.

    ``threads`` is the number of cores to use (default: all); each image in flight runs the
    model on ``DEPTHFLEET_THREADS`` threads (default 1). Inputs that failed before are tried
    again; succeeded ones with artifacts on disk are skipped. ``options`` are a job's
    (``parallax``, ``mesh``: those of the 3D artifacts).
    """
    inputs = find_inputs(paths)
    folder = OutputFolder(out, [inp.name for inp in inputs])
    todo = [(i, inp) for i, inp in enumerate(inputs) if not folder.is_done(inp.name)]
    failed = 0
    if todo:
        reuse_photo_buffers()
        per_image = settings.threads or 1
        in_flight = max(1, min(len(todo), (threads or _cores()) // per_image))
        backend = load_backend(settings, per_image, callers=in_flight)
        predictor = _Predictor(folder, DepthEstimator(backend, settings.fast_decode), settings,
                               max_side, outputs or list(FULL_SIZE), options or {})
        with ThreadPoolExecutor(in_flight) as pool, \
                tqdm(total=len(todo), desc="depth", unit="img", dynamic_ncols=True) as bar:
            for ok in pool.map(predictor, todo):
                failed += not ok
                bar.update()
    folder.finalize([inp.name for inp in inputs])
    return failed
