"""The measurements behind two choices: ``.venv/bin/python -m bench.layouts``.

1. Processes x threads: ``depthfleet run`` with 2 worker processes of 1 thread against 1
   process of 2 threads, and ``depthfleet predict`` with 2 images in flight of 1 thread
   each against 1 image of 2 threads (wall-clock images/s, start-up included alike).
2. Bringing results home in ``depthfleet run``: the same finished job collected over HTTP
   through the API and by hard links out of the storage folder, in wall time and in CPU
   seconds of the collecting process plus the API's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import workloads
from bench.procs import run_command
from bench.run import REPO, checkpoint, command_env
from depthfleet.client import Client
from depthfleet.local import local_system
from depthfleet.outputs import OutputFolder
from depthfleet.results import Collector, StoredArtifacts
from depthfleet.shared.pipeline import prepare_model_files
from depthfleet.shared.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LAYOUTS = {  # name: (command, extra arguments, environment)
    "run, 2 processes x 1 thread": ("run", ["--workers", "2", "--threads", "1"], {}),
    "run, 1 process x 2 threads": ("run", ["--workers", "1", "--threads", "2"], {}),
    "predict, 2 images x 1 thread": ("predict", [], {"DEPTHFLEET_THREADS": "1"}),
    "predict, 1 image x 2 threads": ("predict", [], {"DEPTHFLEET_THREADS": "2"}),
}


def layout_rates(folder: Path, count: int, env: dict[str, str], scratch: Path) -> None:
    for name, (command, extra, more_env) in LAYOUTS.items():
        out = scratch / f"out-{len(list(scratch.iterdir()))}"
        run = run_command([sys.executable, "-m", "depthfleet.cli", command, str(folder), "--out",
                           str(out), *extra], {**env, **more_env}, cwd=REPO)
        print(f"  {name:<32} {count / run.seconds:6.2f} img/s ({run.seconds:.1f} s)", flush=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def collection_costs(images: list[Path], settings: Settings, scratch: Path) -> None:
    """One job, collected twice: over HTTP, then by links."""
    local = settings.with_(tenant_sources={"local": (images[0].parent.as_uri() + "/",)})
    with local_system(local, scratch / "system", workers=2, threads=1) as system:
        client = Client(system.api_url)
        names = {image.as_uri(): image.name for image in images}
        job = client.submit_json({"keys": list(names)})
        client.wait(job["id"], interval=0.2)
        api_pid = system.processes[0].pid  # the API, then the workers: in start order
        for how, stored in (("HTTP", None), ("links", StoredArtifacts.open(system.settings))):
            cpu, api_cpu, started = _own_cpu_seconds(), _cpu_seconds(api_pid), time.perf_counter()
            Collector(client, job["id"], OutputFolder(scratch / f"collect-{how}"),
                      lambda item: names[item["name"]], stored=stored).run(interval=0.05)
            print(f"  collect {len(images)} x 3 artifacts by {how:<6} "
                  f"{time.perf_counter() - started:6.2f} s wall, "
                  f"{_own_cpu_seconds() - cpu + _cpu_seconds(api_pid) - api_cpu:6.2f} s CPU",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=8)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "depthfleet-bench")
    args = parser.parse_args(argv)
    settings = Settings(weights=str(checkpoint(args.cache)), cache_dir=args.cache / "models")
    prepare_model_files(settings)
    env = command_env(settings, {})
    with tempfile.TemporaryDirectory(prefix="depthfleet-layouts-") as tmp:
        scratch = Path(tmp)
        small = workloads.make_small(scratch / "in-small", args.copies)
        big = workloads.make_big(scratch / "in-big", args.big)
        for name, images in (("small", small), ("12mp", big)):
            print(f"{name} photos, {len(images)} images", flush=True)
            runs = scratch / f"runs-{name}"
            runs.mkdir()
            layout_rates(images[0].parent, len(images), env, runs)
        collection_costs(big, settings, scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
