"""Peer benchmark: our router against PgQueuer, claim → no-op → acknowledge, same database, one run.

One durable embedded PostgreSQL (fsync on) holds both schemas. Each side gets the same number of
jobs queued up front and one worker to drain them:
  * PgQueuer (the current release, asyncpg driver) at several batch sizes, each with its
    default session and with the router's own (synchronous_commit off); its best counts;
  * our router with a no-op destination (claim, plan, deliver, settle with attempt history).
Prints both rates and their ratio. PgQueuer comes from the bench extra, never a runtime
dependency:

    pip install -e '.[server,bench]'
    python bench/peer_bench.py --jobs 30000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_bench import completed, drain_rate, make_router, scratch_bus  # noqa: E402

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
    would take CPU from whichever side happens to run next."""
    with conn.cursor() as cursor:
        cursor.execute("vacuum analyze")


def _cpu_seconds_since(before: os.times_result) -> float:
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30000)
    parser.add_argument("--pgqueuer-batches", default="10,100,500", help="batch sizes to try")
    parser.add_argument("--router-batch", type=int, default=1000)
    args = parser.parse_args()

    with scratch_bus("ipai-peer-bench-") as (url, conn):
        asyncio.run(install_pgqueuer(url))
        print(
            f"{args.jobs} jobs each side; one worker each; PostgreSQL durable (fsync on);"
            f" {multiprocessing.cpu_count()} cores; PgQueuer {pgqueuer.__version__} (asyncpg)"
        )
        best = 0.0
        for batch in (int(size) for size in args.pgqueuer_batches.split(",")):
            # Its default, and the router's own session setting (acknowledgements that need not
            # wait for the WAL flush): the best of both counts.
            for label, settings in (("", {}), (", no commit wait", ROUTER_SESSION_SETTINGS)):
                vacuum_everything(conn)
                rate = asyncio.run(pgqueuer_rate(url, args.jobs, batch, dict(settings)))
                print(f"{f'PgQueuer, batch {batch}{label}':<36} {rate:9.0f} jobs/s")
                best = max(best, rate)
        vacuum_everything(conn)
        router = make_router(url, NoopDestination(), batch_size=args.router_batch)
        before = os.times()
        ours = drain_rate(conn, url, router, args.jobs, "peer")
        cpu = _cpu_seconds_since(before)
        assert completed(conn) == args.jobs
        print(f"{f'ipai-bus router, batch {args.router_batch}':<36} {ours:9.0f} events/s")
        print(
            f"  the router's own CPU (Python, all threads): {cpu / args.jobs * 1e6:.0f} µs per"
            f" event; at {ours:.0f} events/s the wall time is {1e6 / ours:.0f} µs per event"
            " on 2 cores shared with PostgreSQL"
        )
        print(f"ratio ipai-bus / best PgQueuer: {ours / best:.2f}")


if __name__ == "__main__":
    main()
