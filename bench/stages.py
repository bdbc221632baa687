"""Where a worker's time goes on one photo, storing the compact set or the full-size files too.

Like a worker pool process (one thread everywhere, its allocator policy), on the same
functions ``shared.render.render`` calls, best of ``--runs`` per stage:

    .venv/bin/python -m bench.stages PHOTO [--runs 5]   (prints ms per stage)

The difference between the two stored sets is the full-size encoders and the bytes written;
the rest (decode, network, the depth range, the compact set) is paid either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.storage import best_ms
from depthfleet.shared.artifacts import (ARTIFACTS, COMPACT, FULL_SIZE, make_compact,
                                         render_full_size)
from depthfleet.shared.depth import RawDepth
from depthfleet.shared.imaging.decode import decode_image
from depthfleet.shared.memory import reuse_photo_buffers
from depthfleet.shared.pipeline import DepthEstimator, load_backend
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import FileStorage
from depthfleet.worker.runtime import pin_threads


def _store(storage: FileStorage, artifacts: dict[str, bytes | bytearray]) -> Callable[[], None]:
    def put() -> None:
        for name, blob in artifacts.items():
            storage.put(f"results/{ARTIFACTS[name].filename}", bytes(blob))
    return put


def stage_ms(settings: Settings, data: bytes, scratch: Path, runs: int) -> dict[str, float]:
    """Milliseconds per stage of one photo (the stages of ``shared.render.render``)."""
    estimator = DepthEstimator(load_backend(settings, 1))
    rgb = decode_image(data, settings.max_pixels)
    raw = RawDepth(estimator.predict_raw(rgb), int(rgb.shape[1]), int(rgb.shape[0]))
    depth = raw.at()
    compact = make_compact(raw, rgb, COMPACT)
    storage = FileStorage(scratch)
    stages: dict[str, Callable[[], object]] = {
        "decode": lambda: decode_image(data, settings.max_pixels),
        "network (input + forward)": lambda: estimator.predict_raw(rgb),
        "upsample (for the depth range)": raw.at,
        f"compact set ({len(COMPACT)} artifacts)": lambda: make_compact(raw, rgb, COMPACT),
        **{f"compact: {ARTIFACTS[name].filename}": (lambda n=name: make_compact(raw, rgb, [n]))
           for name in COMPACT},
        **{f"full-size: {ARTIFACTS[name].filename}": (lambda n=name: render_full_size(
            raw, [n], depth=depth)) for name in FULL_SIZE},
        "store compact set (files)": _store(storage, compact),
        "store full-size files": _store(storage, render_full_size(raw, FULL_SIZE, depth=depth)),
    }
    return {name: best_ms(work, runs) for name, work in stages.items()}


def main(argv: list[str] | None = None) -> int:
    from bench.run import checkpoint  # the bench's weights, made once

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "depthfleet-bench")
    args = parser.parse_args(argv)
    reuse_photo_buffers()
    pin_threads(1)
    settings = Settings(weights=str(checkpoint(args.cache)), cache_dir=args.cache / "models")
    with tempfile.TemporaryDirectory(prefix="depthfleet-stages-") as scratch:
        timings = stage_ms(settings, args.photo.read_bytes(), Path(scratch), args.runs)
    print(f"{args.photo.name}: one thread, best of {args.runs}")
    for name, ms in timings.items():
        print(f"  {name:<40} {ms:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
