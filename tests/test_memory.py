"""Handing freed heap memory back: measured on a real process's resident memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipai_bus_lib.core.memory import _libc

REPO = Path(__file__).resolve().parent.parent

# 100 MB of blocks malloc serves from its heap, then one more above them, which keeps the
# heap's top in use: free() cannot give the 100 MB back, malloc_trim(0) can.
PINNED_HEAP = """
import psutil
from ipai_bus_lib.core.memory import FreedMemoryReturner, cap_malloc_arenas
returner = FreedMemoryReturner(interval_seconds=3600)
blocks = [bytes(2048) for _ in range(50_000)]
pin = bytes(2048)
del blocks
held = psutil.Process().memory_info().rss
early = returner.when_idle()  # within the interval: nothing done
returner.interval_seconds = 0
trimmed = returner.when_idle()
print(held, psutil.Process().memory_info().rss, early, trimmed)
"""


@pytest.mark.skipif(_libc() is None, reason="no glibc here: nothing to hand back, nothing done")
def test_freed_heap_memory_under_a_live_block_goes_back_to_the_system():
    result = subprocess.run(
        [sys.executable, "-c", PINNED_HEAP], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    held, after, early, trimmed = result.stdout.split()
    assert (early, trimmed) == ("False", "True"), "at most once an interval"
    assert int(held) - int(after) > 60 * 2**20, f"RSS {int(held) >> 20} → {int(after) >> 20} MiB"
