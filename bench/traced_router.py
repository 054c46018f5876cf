"""`ipai-bus route` under tracemalloc, for finding what grows in a long run: a snapshot of
every live Python allocation (25 frames deep) is written to DIRECTORY every INTERVAL seconds.

    python bench/traced_router.py DIRECTORY INTERVAL [route options]

Compare two snapshots with bench/traced_router.py --compare FIRST LAST. bench/chaos.py runs
its spared router this way with --trace-router DIRECTORY.
"""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _snapshots(directory: Path, interval: float) -> None:
    started = time.monotonic()
    while True:
        time.sleep(interval)
        minute = (time.monotonic() - started) / 60
        tracemalloc.take_snapshot().dump(str(directory / f"router-{minute:05.1f}min.snapshot"))


def compare(first: str, last: str, top: int = 15) -> None:
    """The allocation sites that grew most between two snapshots, by their whole traceback."""
    before, after = tracemalloc.Snapshot.load(first), tracemalloc.Snapshot.load(last)
    grown = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in grown)
    print(f"traced Python memory grew {total / 2**20:+.2f} MiB between {first} and {last}")
    for stat in grown[:top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-8:]:
            print("      " + line)


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
        sys.exit(0)
    directory, interval = Path(sys.argv[1]), float(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(25)
    threading.Thread(target=_snapshots, args=(directory, interval), daemon=True).start()
    from ipai_bus_lib.ops.cli import main

    sys.exit(main(["route", *sys.argv[3:]]))
