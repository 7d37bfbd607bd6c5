"""Hand freed memory back to the operating system (glibc), so the resident size follows the load.

glibc keeps freed heap memory for reuse, so after a rare large batch the
resident size would stay at its peak (why: docs/architecture.md, Serving).
`tune_allocator` (at startup) sets a fixed mmap threshold and at most `ARENAS`
malloc arenas; `release_free_memory` (when a model's queue has run empty)
calls `malloc_trim(0)`. Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024  # buffers from 256 KiB up are mapped, and unmapped when freed
TRIM_THRESHOLD = 1024 * 1024  # free memory above the heap's top beyond 1 MiB goes back
ARENAS = 2  # malloc arenas: fewer, fuller arenas fragment less than one per thread


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc (musl, macOS)
    return libc


def tune_allocator() -> bool:
    """Set the mmap and trim thresholds and the arena count; False where not glibc."""
    libc = _libc()
    if libc is None:
        logger.debug("not glibc: the allocator is left as it is")
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_ARENA_MAX, ARENAS),
        )
    )
    if not ok:
        logger.warning("glibc refused an allocator setting; memory may stay at its peak")
    return ok


def release_free_memory() -> bool:
    """Return free heap pages to the system; True if any were released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
