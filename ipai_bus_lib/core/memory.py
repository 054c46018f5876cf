"""Keeping a long-running, many-threaded process's resident memory flat."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt() parameter for the number of malloc arenas (malloc.h).
_M_ARENA_MAX = -8


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Have glibc's malloc share at most ``arenas`` arenas among all threads made from now on.

    By default every busy thread may get an arena of its own (up to 8 per core): the router's
    64 delivery threads then spread the same allocations over 16 heaps, each fragmenting and
    holding freed memory on its own, and the process's RSS creeps up for hours under a steady
    load. Python's own small objects do not use malloc arenas, and the GIL serialises the rest,
    so sharing two costs nothing measurable. False where there is no glibc (nothing changes).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, or no such arenas
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
