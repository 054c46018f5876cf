"""Peer benchmark: our router against PgQueuer, claim → no-op → acknowledge, same database, one run.

One durable embedded PostgreSQL (fsync on) holds both schemas. Each side gets the same number of
jobs queued up front and one worker to drain them:
  * PgQueuer (the current release, asyncpg driver) at several batch sizes, each with its
    default session and with the router's own (synchronous_commit off); its best counts;
  * our router with a no-op destination (claim, plan, deliver, settle with attempt history).
Finds PgQueuer's best configuration, then runs it and our router in alternating rounds and
prints the ratio of their medians. PgQueuer comes from the bench extra, never a runtime
dependency:

    pip install -e '.[server,bench]'
    python bench/peer_bench.py --jobs 30000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_bench import drain_rate, make_router, scratch_bus  # noqa: E402

from ipai_bus_lib.delivery.destinations import NoopDestination  # noqa: E402
from ipai_bus_lib.delivery.router import ROUTER_SESSION_SETTINGS  # noqa: E402

try:
    import asyncpg
    import pgqueuer
    from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
    from pgqueuer.adapters.persistence.queries import Queries
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.qm import QueueManager
except ImportError:  # pragma: no cover - a bench extra
    sys.exit("peer_bench needs the bench extra: pip install -e '.[server,bench]'")

ENQUEUE_CHUNK = 5000


async def pgqueuer_rate(url: str, jobs: int, batch_size: int, settings: dict[str, str]) -> float:
    """Queue ``jobs`` no-op jobs, then drain them with one QueueManager; jobs per second."""
    connection = await asyncpg.connect(url, server_settings=settings)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.clear_queue()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            count = min(ENQUEUE_CHUNK, jobs - start)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        await connection.execute("analyze")  # as drain_rate does for our side
        manager = QueueManager(queries)
        done = 0

        @manager.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        started = time.perf_counter()
        await manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
        elapsed = time.perf_counter() - started
        if done != jobs:
            raise RuntimeError(f"PgQueuer ran {done} of {jobs} jobs")
        return jobs / elapsed
    finally:
        await connection.close()


async def install_pgqueuer(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


def vacuum_everything(conn) -> None:
    """Before each run: what earlier runs left behind is cleaned now, not by an autovacuum that
    would take CPU from whichever side happens to run next; and a checkpoint, so that neither
    side pays for one that the other's writes made due."""
    with conn.cursor() as cursor:
        cursor.execute("vacuum analyze")
        cursor.execute("checkpoint")


def _cpu_seconds_since(before: os.times_result) -> float:
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30000)
    parser.add_argument("--pgqueuer-batches", default="10,100,500,1000", help="batch sizes to try")
    parser.add_argument("--router-batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating head-to-head rounds")
    args = parser.parse_args()

    with scratch_bus("ipai-peer-bench-") as (url, conn):
        asyncio.run(install_pgqueuer(url))
        print(
            f"{args.jobs} jobs each side; one worker each; PostgreSQL durable (fsync on);"
            f" {multiprocessing.cpu_count()} cores; PgQueuer {pgqueuer.__version__} (asyncpg)"
        )

        def pgqueuer_run(batch: int, settings: Mapping[str, str]) -> float:
            vacuum_everything(conn)
            return asyncio.run(pgqueuer_rate(url, args.jobs, batch, dict(settings)))

        def router_run() -> tuple[float, float]:
            vacuum_everything(conn)
            router = make_router(url, NoopDestination(), batch_size=args.router_batch)
            before = os.times()
            rate = drain_rate(conn, url, router, args.jobs, "peer")
            return rate, _cpu_seconds_since(before)

        # PgQueuer's best configuration: each batch size with its default session and with the
        # router's own (acknowledgements that need not wait for the WAL flush).
        sweep = {}
        for batch in (int(size) for size in args.pgqueuer_batches.split(",")):
            for label, settings in (("", {}), (", no commit wait", ROUTER_SESSION_SETTINGS)):
                sweep[(batch, label)] = (pgqueuer_run(batch, settings), settings)
                print(f"{f'PgQueuer, batch {batch}{label}':<40} {sweep[(batch, label)][0]:9.0f} jobs/s")
        (best_batch, best_label), (_, best_settings) = max(sweep.items(), key=lambda item: item[1][0])

        # Then both, alternating, so that a machine slower for a while slows both sides alike.
        theirs, ours, cpu_per_event = [], [], []
        for _ in range(args.rounds):
            theirs.append(pgqueuer_run(best_batch, best_settings))
            rate, cpu = router_run()
            ours.append(rate)
            cpu_per_event.append(cpu / args.jobs * 1e6)
        named = f"PgQueuer, batch {best_batch}{best_label}"
        print(f"{named:<40} {' '.join(f'{rate:7.0f}' for rate in theirs)}  jobs/s")
        ipai = f"ipai-bus router, batch {args.router_batch}"
        print(f"{ipai:<40} {' '.join(f'{rate:7.0f}' for rate in ours)}  events/s")
        print(
            f"  the router's own CPU (Python, all threads): {statistics.median(cpu_per_event):.0f} µs"
            f" per event; wall time {1e6 / statistics.median(ours):.0f} µs per event on"
            f" {multiprocessing.cpu_count()} cores shared with PostgreSQL"
        )
        print(
            f"ratio ipai-bus / PgQueuer at its best, medians of {args.rounds} alternating rounds:"
            f" {statistics.median(ours) / statistics.median(theirs):.2f}"
        )


if __name__ == "__main__":
    main()
