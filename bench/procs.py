"""Timing commands as users run them, and the memory of the worker pool processes they start.

Worker memory is read where the kernel keeps it: ``VmRSS`` (now) and ``VmHWM`` (peak) in
``/proc/<pid>/status`` of every Celery pool process (a ``celery`` process whose parent is
``celery`` too), sampled every 0.2 s while the command runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_SECONDS = 0.2


@dataclass
class PoolMemory:
    """Per pool process: VmRSS samples (MB) and the last VmHWM seen (MB)."""

    rss: dict[int, list[float]] = field(default_factory=dict)
    peak: dict[int, float] = field(default_factory=dict)

    def steady_mb(self) -> float | None:
        """The largest per-process median RSS over the second half of its samples."""
        medians = [statistics.median(s[len(s) // 2:]) for s in self.rss.values() if s]
        return max(medians, default=None)

    def peak_mb(self) -> float | None:
        return max(self.peak.values(), default=None)


@dataclass
class CommandRun:
    seconds: float
    returncode: int
    stderr_tail: str
    memory: PoolMemory


def _status_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) in MB; None once the process is gone (zombies have no memory lines)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    if "VmRSS" not in fields:
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (parent, command)
    return table


def pool_processes(root: int) -> list[int]:
    """Celery pool processes among the descendants of ``root``."""
    table = _process_table()
    descendants, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items() if parent in frontier}
        descendants |= frontier
    return [pid for pid in descendants
            if "celery" in table[pid][1] and "celery" in table.get(table[pid][0], (0, ""))[1]]


def _sample(root: int, memory: PoolMemory, stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_SECONDS):
        for pid in pool_processes(root):
            reading = _status_mb(pid)
            if reading:
                memory.rss.setdefault(pid, []).append(reading[0])
                memory.peak[pid] = reading[1]


def run_command(args: list[str], env: dict[str, str], cwd: Path | None = None) -> CommandRun:
    """Run ``args`` to completion; wall time, exit status, and its pool processes' memory."""
    memory, stop = PoolMemory(), threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=_sample, args=(proc.pid, memory, stop), daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    return CommandRun(seconds, proc.returncode, stderr[-3000:], memory)


def load_average() -> float:
    return os.getloadavg()[0]
