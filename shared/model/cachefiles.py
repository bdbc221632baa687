"""Machine-wide cache files that many worker processes share safely.

Writers hold an exclusive ``fcntl`` lock while they check for and create an entry, so a fleet
of processes starting together fetches or builds it once. Entries are written to a temporary
file in the same directory and renamed into place, so a reader never sees half a file and a
crash leaves no entry behind, only a temporary that the next writer ignores.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if needed); released on exit or death."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def temporary_path(directory: Path, suffix: str = ".part") -> Iterator[Path]:
    """A fresh file name in ``directory``, deleted on exit unless ``publish`` moved it away."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def publish(temporary: Path, final: Path) -> None:
    """Flush ``temporary`` to disk and atomically rename it to ``final``."""
    with temporary.open("rb+") as fh:
        os.fsync(fh.fileno())
    temporary.chmod(0o644)  # mkstemp makes 0600; cache entries are not secrets
    os.replace(temporary, final)
