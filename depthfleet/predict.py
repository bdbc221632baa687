"""``depthfleet predict``: the whole pipeline in this process, no services (like MiDaS ``run.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from depthfleet.outputs import Input, OutputFolder, find_inputs, manifest_record
from depthfleet.shared.errors import InputError
from depthfleet.shared.imaging.encode import ARTIFACTS
from depthfleet.shared.pipeline import DepthEstimator, load_backend
from depthfleet.shared.render import render
from depthfleet.shared.settings import Settings


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def predict(paths: list[Path], out: Path, settings: Settings, threads: int | None = None,
            max_side: int | None = None, outputs: list[str] | None = None) -> int:
    """Process every input not already done in ``out``; returns how many failed this time.

    Inputs that failed before are tried again; succeeded ones with artifacts on disk are skipped.
    """
    inputs = find_inputs(paths)
    folder = OutputFolder(out, [inp.name for inp in inputs])
    todo = [(i, inp) for i, inp in enumerate(inputs) if not folder.is_done(inp.name)]
    failed = 0
    if todo:
        estimator = DepthEstimator(load_backend(settings, threads or settings.threads or _cores()))
        for index, inp in tqdm(todo, desc="depth", unit="img", dynamic_ncols=True):
            failed += not _predict_one(inp, index, folder, estimator, settings, max_side,
                                       outputs or list(ARTIFACTS))
    folder.finalize([inp.name for inp in inputs])
    return failed


def _predict_one(inp: Input, index: int, folder: OutputFolder, estimator: DepthEstimator,
                 settings: Settings, max_side: int | None, outputs: list[str]) -> bool:
    try:
        rendered = render(inp.path.read_bytes(), estimator, outputs, max_side, settings.max_pixels)
    except InputError as exc:
        folder.record(manifest_record(index, inp.name, "failed", error=exc.to_dict()))
        return False
    artifacts = {name: folder.write_artifact(inp.name, name, blob)
                 for name, blob in rendered.artifacts.items()}
    folder.record(manifest_record(index, inp.name, "succeeded", summary=rendered.summary(),
                                  artifacts=artifacts))
    return True
