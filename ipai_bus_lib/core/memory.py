"""Keeping a long-running, many-threaded process's resident memory flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any

# glibc's mallopt() parameter for the number of malloc arenas (malloc.h).
_M_ARENA_MAX = -8


def _libc() -> Any:
    """glibc, or None where there is none (musl, macOS): then nothing here changes anything."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if all(hasattr(libc, f) for f in ("mallopt", "malloc_trim")) else None


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Have glibc's malloc share at most ``arenas`` arenas among all threads made from now on.

    By default every busy thread may get an arena of its own (up to 8 per core): the router's
    64 delivery threads then spread the same allocations over 16 heaps, each holding freed
    memory on its own. Python's own small objects do not use malloc arenas, and the GIL
    serialises the rest, so sharing two costs nothing measurable.
    """
    libc = _libc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, arenas))


class FreedMemoryReturner:
    """Hands the heap memory malloc holds free back to the system (glibc's ``malloc_trim(0)``),
    at most every ``interval_seconds``: call ``when_idle()`` whenever the process has nothing
    to do.

    free() gives memory back only from the top of a heap, so a heap whose peak (a large batch,
    a backlog after an outage) left a live allocation above its free space keeps that space
    resident; RSS then climbs in steps with every new peak over hours, with no object leaked.
    malloc_trim(0) releases the free pages inside the heaps too. It takes about a millisecond.
    """

    def __init__(self, interval_seconds: float = 30.0) -> None:
        self._libc = _libc()
        self.interval_seconds = interval_seconds
        self._last = time.monotonic()

    def when_idle(self) -> bool:
        """Trim if the interval has passed; True when memory was handed back."""
        if self._libc is None or time.monotonic() - self._last < self.interval_seconds:
            return False
        self._last = time.monotonic()
        return bool(self._libc.malloc_trim(0))
