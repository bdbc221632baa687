"""Process-wide allocator policy for processes that turn photos into artifacts.

A 12 MP photo passes through a handful of 30-50 MB arrays. glibc serves such blocks from
fresh memory mappings (above its mmap threshold, which it also moves after every big free),
so every photo page-faults and zero-fills them anew in the kernel: ~40% of the CPU time of
``depthfleet predict`` on 12 MP photos was system time. Serving blocks up to 64 MB from the
heap and keeping up to 256 MB of it free for the next photo cut that time in half and made
12 MP photos 15-25% faster; a process then holds its largest photo's working set (about
400 MB at 12 MP) instead of returning it between photos. Bigger blocks still get their own
mappings, so a rare 50 MP photo does not pin its memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BLOCKS_UP_TO = 64 << 20
KEEP_FREE_UP_TO = 256 << 20


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    libc_name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    return getattr(ctypes.CDLL(libc_name), name, None) if libc_name else None


def reuse_photo_buffers() -> None:
    """Apply the policy above to this process (glibc only; elsewhere a no-op)."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)
        mallopt(M_TRIM_THRESHOLD, KEEP_FREE_UP_TO)


def resident_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm`` (0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class HeapTrimmer:
    """Gives the heap's free pages back to the kernel when a process holds more than a limit.

    Freed photo buffers leave holes in the heap that the policy above keeps for reuse; over
    a stream of differently sized photos they add up (a pool process crept from 240 to about
    400 MB over 224 small photos). But trimming after every photo makes the next big photo
    page-fault its buffers afresh: 12 MP photos through ``run`` took 15% longer (326-330 ms
    against 279-292 ms per photo). So a process trims at most once every ``every`` photos:
    small-photo streams stay near the limit, big-photo streams keep their buffers.
    """

    def __init__(self, limit_bytes: int, every: int = 16) -> None:
        self.limit_bytes, self.every = limit_bytes, every
        self._photos_since_trim = every  # the first photo past the limit may trim

    def after_photo(self) -> bool:
        """Call after each photo; returns whether it trimmed."""
        self._photos_since_trim += 1
        if (self.limit_bytes <= 0 or self._photos_since_trim < self.every
                or resident_bytes() <= self.limit_bytes):
            return False
        self._photos_since_trim = 0
        malloc_trim = _libc_function("malloc_trim")
        return bool(malloc_trim and malloc_trim(0))
