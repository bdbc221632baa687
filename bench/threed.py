"""What the 3D artifacts cost a worker per 12 MP photo: ms for each, and the peak memory.

    .venv/bin/python -m bench.threed [--runs 3]

Each case runs in a fresh process set up like a worker pool process (one thread everywhere,
its allocator policy), on a 12 MP JPEG as the bench makes them (``workloads.make_big``):
``shared.render.render`` once with what a worker stores for ``options.outputs`` (the compact
set, plus the artifact), then the artifact alone (``make_from_photo``) best of ``--runs``,
in wall and CPU time (the machine is shared: CPU time is what the artifact costs a core).
Twice: on the depth the bench's stand-in weights give (noise-like: 40% of each frame's pixels
are holes to fill, the worst case) and on a smooth depth like a real photo's (a tilted ground
and a near blob: 1-2%). The process's peak RSS (``VmHWM``) after the worker's render, before the timing runs, is
printed beside that of the same process storing the compact set only: the difference is what
the artifact adds to a worker's peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CASES = {"compact set only": [], "parallax_mp4": ["parallax_mp4"], "mesh_glb": ["mesh_glb"],
         "both": ["parallax_mp4", "mesh_glb"]}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def measure(photo: Path, cache: Path, names: list[str], runs: int) -> dict[str, Any]:
    """One case, in this process: the worker's render, then the drawn artifacts alone."""
    from bench.run import checkpoint
    from bench.storage import best_ms
    from depthfleet.shared.artifacts import make_from_photo, stored_outputs
    from depthfleet.shared.imaging.decode import decode_image
    from depthfleet.shared.memory import reuse_photo_buffers
    from depthfleet.shared.pipeline import DepthEstimator, load_backend
    from depthfleet.shared.render import render
    from depthfleet.shared.settings import Settings
    from depthfleet.worker.runtime import pin_threads

    reuse_photo_buffers()
    pin_threads(1)
    settings = Settings(weights=str(checkpoint(cache)), cache_dir=cache / "models")
    estimator = DepthEstimator(load_backend(settings, 1))
    data = photo.read_bytes()
    rendered = render(data, estimator, stored_outputs(names), None, settings.max_pixels, {})
    result: dict[str, Any] = {"bytes": {n: len(rendered.artifacts[n]) for n in names},
                              "peak_rss_mb": peak_rss_mb()}  # a worker's, after one photo
    rgb = decode_image(data, settings.max_pixels)
    for depth, raw in (("noise", rendered.raw), ("smooth", smooth_raw(rendered.raw))):
        for name in names:
            started = time.process_time()
            wall = best_ms(lambda n=name: make_from_photo(raw, rgb, [n], {}), runs)
            cpu = (time.process_time() - started) * 1000 / runs
            result.setdefault(depth, {})[name] = {"ms": wall, "cpu_ms": cpu}
    return result


def smooth_raw(raw: Any) -> Any:
    """``raw`` with a smooth network output instead: inverse depth rising toward the bottom
    (the ground coming nearer) and a near blob left of centre, as real scenes go."""
    from depthfleet.shared.depth import RawDepth

    rows, cols = raw.net.shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    blob = np.exp(-((x - 0.4 * cols) ** 2 + (y - 0.55 * rows) ** 2) / (2 * (0.12 * rows) ** 2))
    return RawDepth(1 + 2 * y / rows + 3 * blob, raw.width, raw.height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "depthfleet-bench")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process: one case
    parser.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case is not None:
        print(json.dumps(measure(args.photo, args.cache, CASES[args.case], args.runs)))
        return 0
    from bench.workloads import make_big
    from depthfleet.shared.settings import Settings

    with tempfile.TemporaryDirectory(prefix="depthfleet-threed-") as scratch:
        photo = make_big(Path(scratch), 1)[0]
        results = {case: json.loads(subprocess.run(
            [sys.executable, "-m", "bench.threed", "--case", case, "--photo", str(photo),
             "--runs", str(args.runs), "--cache", str(args.cache)],
            check=True, capture_output=True, text=True).stdout) for case in CASES}
    base = results["compact set only"]["peak_rss_mb"]
    print(f"12 MP photo (4032x3024), one thread, best of {args.runs} (wall / CPU ms); "
          "peak RSS per process:")
    for case, result in results.items():
        costs = "; ".join(
            f"{name} {result['bytes'][name] / 1e6:.2f} MB: " + ", ".join(
                f"{depth} {result[depth][name]['ms']:.0f} / {result[depth][name]['cpu_ms']:.0f}"
                for depth in ("noise", "smooth")) for name in result["bytes"]) or "-"
        print(f"  {case:<17} peak {result['peak_rss_mb']:4.0f} MB "
              f"(+{result['peak_rss_mb'] - base:3.0f})  {costs}")
    print(f"  DEPTHFLEET_WORKER_MEMORY_MB default: {Settings().worker_memory_mb} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
