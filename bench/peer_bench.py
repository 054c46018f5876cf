"""Peer benchmark: our router against Graphile Worker and PgQueuer, claim → no-op → settle, on one
durable PostgreSQL cluster, in one run.

One embedded PostgreSQL (fsync on) holds all three schemas. Each run queues the same number of
no-op jobs in one transaction while the workers wait (so start-up is never timed), commits, and
times until the queue is empty:
  * Graphile Worker (Node, several processes, concurrency, local queue, batched completion);
  * PgQueuer (asyncpg) at several batch sizes, with its default session and with the router's;
  * our router with a no-op destination, in one or more processes: claim, plan, deliver, settle
    with the attempt history and the audit copy, everything the bus promises.
First each peer's configurations are swept and its best kept; then the three run in alternating
rounds. Printed per run: jobs/s, the 1-minute load average when it started, and CPU seconds per
1,000 jobs of the workers (client) and of PostgreSQL (every server process, exited ones too).

Graphile Worker and its Node packages are installed by this bench under build/peer-bench (npm),
never by `make test`; PgQueuer comes from the bench extra:

    pip install -e '.[server,bench]'
    python bench/peer_bench.py --jobs 30000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from router_bench import any_unsettled, make_router, reset, scratch_bus  # noqa: E402

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

GRAPHILE_VERSION = "0.17.3"  # 0.18 needs Node 22; this machine's Node is 20
GRAPHILE_HOME = ROOT / "build" / "peer-bench"
GRAPHILE_DRIVER = ROOT / "bench" / "graphile_drain.cjs"
ENQUEUE_CHUNK = 5000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# By the primary key, as the router's probe takes its due index: a bare EXISTS was planned as a
# heap scan, which read past every job deleted so far at every poll.
GRAPHILE_ANY_JOB = (
    "select (select id from graphile_worker._private_jobs order by id limit 1) is not null"
)


@dataclass(frozen=True)
class Run:
    """One drain: jobs per second, CPU seconds of the workers and of PostgreSQL, load at start."""

    jobs: int
    seconds: float
    client_cpu: float
    server_cpu: float
    load: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


# --- measuring ---------------------------------------------------------------------------------


def postmaster_pid(conn) -> int:
    with conn.cursor() as cursor:
        cursor.execute("select pg_backend_pid()")
        backend = cursor.fetchone()[0]
    return int(_stat_fields(backend)[1])


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, … (utime is [11], stime [12])."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU of the whole cluster so far: the postmaster, its live children, and (through the
    postmaster's cutime/cstime) every child that has exited: backends of closed connections."""
    fields = _stat_fields(postmaster)
    ticks = sum(int(value) for value in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks / CLOCK_TICKS


def vacuum_everything(conn) -> None:
    """Before each run: what earlier runs left behind is cleaned now, not by an autovacuum that
    would take CPU from whichever side happens to run next; and a checkpoint, so that neither
    side pays for one that the other's writes made due."""
    with conn.cursor() as cursor:
        cursor.execute("vacuum analyze")
        cursor.execute("checkpoint")


def timed_drain(
    conn, postmaster: int, queue_sql: str, params: Mapping[str, object], queue_empty: Callable[[], bool]
) -> tuple[float, float]:
    """Queue the jobs in one transaction, commit, wait until ``queue_empty``: (seconds, PostgreSQL
    CPU seconds) from the commit on."""
    conn.autocommit = False
    try:
        with conn.cursor() as cursor:
            cursor.execute(queue_sql, params)
        server_before = postgres_cpu_seconds(postmaster)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
    started = time.perf_counter()
    while not queue_empty():
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    return elapsed, postgres_cpu_seconds(postmaster) - server_before


def _exists(conn, sql: str) -> bool:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return bool(cursor.fetchone()[0])


# --- Graphile Worker ---------------------------------------------------------------------------


def install_graphile() -> Path | None:
    """build/peer-bench/node_modules with graphile-worker, installed by npm if missing; None (and
    one line saying why) when Node, npm or the package cannot be had."""
    modules = GRAPHILE_HOME / "node_modules"
    package = modules / "graphile-worker" / "package.json"
    if package.exists() and f'"version": "{GRAPHILE_VERSION}"' in package.read_text():
        return modules
    if not (shutil.which("node") and shutil.which("npm")):
        print(
            "Graphile Worker skipped: node and npm are not on PATH (Debian: apt-get install nodejs npm)"
        )
        return None
    GRAPHILE_HOME.mkdir(parents=True, exist_ok=True)
    (GRAPHILE_HOME / "package.json").write_text('{"name": "peer-bench", "private": true}\n')
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", f"graphile-worker@{GRAPHILE_VERSION}"],
        cwd=GRAPHILE_HOME,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"Graphile Worker skipped: npm install graphile-worker@{GRAPHILE_VERSION} failed: {last}")
        return None
    return modules


GRAPHILE_JOBS = "select count(graphile_worker.add_job('noop')) from generate_series(1, %(n)s)"
GRAPHILE_ORDERED_JOBS = (
    "select count(graphile_worker.add_job('noop', queue_name => 'record-' || g))"
    " from generate_series(1, %(n)s) g"
)


@dataclass(frozen=True)
class GraphileConfig:
    processes: int
    concurrency: int
    local_queue: int
    complete_delay_ms: int
    sync: str  # "on" or "off" (synchronous_commit of its sessions)

    @classmethod
    def parse(cls, text: str) -> GraphileConfig:
        """From procs:concurrency:local-queue:complete-delay-ms:sync, e.g. 2:50:500:5:off."""
        processes, concurrency, local_queue, delay, sync = text.split(":")
        return cls(int(processes), int(concurrency), int(local_queue), int(delay), sync)

    def __str__(self) -> str:
        return (
            f"Graphile Worker procs={self.processes} conc={self.concurrency} lq={self.local_queue}"
            f" batch-complete={self.complete_delay_ms}ms sync={self.sync}"
        )


def _graphile(modules: Path, url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["node", str(GRAPHILE_DRIVER), *args],
        env={**os.environ, "NODE_PATH": str(modules), "DATABASE_URL": url},
        stdout=subprocess.PIPE,
        text=True,
    )


def graphile_run(
    modules: Path,
    url: str,
    conn,
    postmaster: int,
    jobs: int,
    config: GraphileConfig,
    ordered: bool = False,
) -> Run:
    """One drain by ``config.processes`` workers; ``ordered`` puts each job in a named queue of
    its own record, Graphile Worker's way to keep one record's jobs in order (the router keeps
    every record's events in order)."""
    vacuum_everything(conn)
    load = os.getloadavg()[0]
    workers = [
        _graphile(
            modules,
            url,
            "work",
            str(config.concurrency),
            str(config.local_queue),
            str(config.complete_delay_ms),
            config.sync,
        )
        for _ in range(config.processes)
    ]
    try:
        for worker in workers:
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a Graphile Worker process did not start")
        seconds, server_cpu = timed_drain(
            conn,
            postmaster,
            GRAPHILE_ORDERED_JOBS if ordered else GRAPHILE_JOBS,
            {"n": jobs},
            lambda: not _exists(conn, GRAPHILE_ANY_JOB),
        )
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    ran, client_cpu = 0, 0.0
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        _, count, _, cpu = out.split()[-4:]
        ran, client_cpu = ran + int(count), client_cpu + float(cpu)
    if ran != jobs:
        raise RuntimeError(f"Graphile Worker ran {ran} of {jobs} jobs")
    return Run(jobs, seconds, client_cpu, server_cpu, load)


# --- PgQueuer --------------------------------------------------------------------------------


async def _pgqueuer_drain(
    url: str, jobs: int, batch_size: int, settings: dict[str, str], postmaster: int
) -> Run:
    connection = await asyncpg.connect(url, server_settings=settings)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.clear_queue()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            count = min(ENQUEUE_CHUNK, jobs - start)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        await connection.execute("analyze")
        manager = QueueManager(queries)
        done = 0

        @manager.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        load = os.getloadavg()[0]
        client_before, server_before = os.times(), postgres_cpu_seconds(postmaster)
        started = time.perf_counter()
        await manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
        elapsed = time.perf_counter() - started
        client_cpu = _cpu_seconds_since(client_before)
        server_cpu = postgres_cpu_seconds(postmaster) - server_before
        if done != jobs:
            raise RuntimeError(f"PgQueuer ran {done} of {jobs} jobs")
        return Run(jobs, elapsed, client_cpu, server_cpu, load)
    finally:
        await connection.close()


async def install_pgqueuer(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


def pgqueuer_run(
    url: str, conn, postmaster: int, jobs: int, batch: int, settings: Mapping[str, str]
) -> Run:
    vacuum_everything(conn)
    return asyncio.run(_pgqueuer_drain(url, jobs, batch, dict(settings), postmaster))


def _cpu_seconds_since(before: os.times_result) -> float:
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


# --- our router ------------------------------------------------------------------------------

PREFILL = (
    "select count(*) from generate_series(1, %(n)s) g, lateral"
    " integration.insert_outbox_event('asset.reserved', 'maintenance.equipment',"
    " %(run)s || g, '{\"booking_id\": 1}', %(run)s || '-' || g)"
)


def _router_process(url: str, batch: int, ready, stop, report) -> None:
    """One router in its own process: says ready, runs until ``stop``, reports its CPU."""
    router = make_router(url, NoopDestination(), batch_size=batch)
    router.probe_notifications()
    thread = threading.Thread(target=router.run)
    before = os.times()
    thread.start()
    ready.release()
    stop.wait()
    router.stop()
    thread.join()
    report.put(_cpu_seconds_since(before))


def router_run(url: str, conn, postmaster: int, jobs: int, processes: int, batch: int) -> Run:
    reset(conn)
    vacuum_everything(conn)
    load = os.getloadavg()[0]
    spawn = multiprocessing.get_context("spawn")  # a forked child would share our connection
    ready, stop, report = spawn.Semaphore(0), spawn.Event(), spawn.Queue()
    routers = [
        spawn.Process(target=_router_process, args=(url, batch, ready, stop, report))
        for _ in range(processes)
    ]
    for router in routers:
        router.start()
    try:
        for _ in routers:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a router process did not start")
        time.sleep(0.3)  # past the router's first (empty) claim, into its LISTEN
        seconds, server_cpu = timed_drain(
            conn,
            postmaster,
            PREFILL,
            {"n": jobs, "run": f"peer-{time.monotonic_ns()}"},
            lambda: not any_unsettled(conn),
        )
    finally:
        stop.set()
    client_cpu = sum(report.get(timeout=60) for _ in routers)
    for router in routers:
        router.join()
    with conn.cursor() as cursor:
        cursor.execute("select count(*) from integration.event_state where status = 'completed'")
        completed = cursor.fetchone()[0]
    if completed != jobs:
        raise RuntimeError(f"the router completed {completed} of {jobs} events")
    return Run(jobs, seconds, client_cpu, server_cpu, load)


# --- the report ------------------------------------------------------------------------------


def line(name: str, runs: list[Run]) -> str:
    rates = " ".join(f"{run.rate:7.0f}" for run in runs)
    loads = "/".join(f"{run.load:.1f}" for run in runs)
    median = statistics.median(run.rate for run in runs)
    client = statistics.median(run.client_cpu for run in runs) / runs[0].jobs * 1000
    server = statistics.median(run.server_cpu for run in runs) / runs[0].jobs * 1000
    return (
        f"{name:<62} {rates}  median {median:7.0f} jobs/s  load {loads}"
        f"  CPU/1000: client {client:.3f} s + PostgreSQL {server:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating head-to-head rounds")
    parser.add_argument("--pgqueuer-batches", default="100,1000", help="batch sizes to try")
    parser.add_argument("--router-batch", type=int, default=1000)
    parser.add_argument("--router-processes", default="1,2", help="router process counts to try")
    parser.add_argument(
        "--graphile",
        default="2:50:500:5:off,2:50:500:5:on,1:50:500:5:off,2:100:1000:5:off,2:24:100:5:off",
        help="procs:concurrency:local-queue:complete-delay-ms:sync configurations to try",
    )
    parser.add_argument(
        "--graphile-ordered",
        default="2:100:1000:5:off",
        help="also run Graphile Worker with a named queue per record in this configuration ('' skips)",
    )
    args = parser.parse_args()
    modules = install_graphile()

    with scratch_bus("ipai-peer-bench-") as (url, conn):
        postmaster = postmaster_pid(conn)
        asyncio.run(install_pgqueuer(url))
        if modules is not None:
            subprocess.run(
                ["node", str(GRAPHILE_DRIVER), "install"],
                env={**os.environ, "NODE_PATH": str(modules), "DATABASE_URL": url},
                check=True,
            )
        print(
            f"{args.jobs} jobs a run; PostgreSQL durable (fsync on); {multiprocessing.cpu_count()} cores;"
            f" Graphile Worker {GRAPHILE_VERSION if modules else '(absent)'} (Node {_node_version()});"
            f" PgQueuer {pgqueuer.__version__} (asyncpg)"
        )
        systems: dict[str, tuple[str, Callable[[], Run]]] = {}

        def keep_best(family: str, candidates: dict[str, Callable[[], Run]]) -> None:
            """Run each of a family's configurations once, print it, keep the fastest."""
            tried = {name: run() for name, run in candidates.items()}
            for name, result in tried.items():
                print(line(f"  sweep: {name}", [result]))
            winner = max(tried, key=lambda name: tried[name].rate)
            systems[family] = (winner, candidates[winner])

        if modules is not None:
            keep_best(
                "Graphile Worker",
                {
                    str(config): partial(graphile_run, modules, url, conn, postmaster, args.jobs, config)
                    for config in map(GraphileConfig.parse, args.graphile.split(","))
                },
            )
        keep_best(
            "PgQueuer",
            {
                f"PgQueuer, batch {batch}{label}": partial(
                    pgqueuer_run, url, conn, postmaster, args.jobs, batch, settings
                )
                for batch in (int(size) for size in args.pgqueuer_batches.split(","))
                for label, settings in (("", {}), (", no commit wait", ROUTER_SESSION_SETTINGS))
            },
        )
        keep_best(
            "router",
            {
                f"ipai-bus router, procs={procs} batch {args.router_batch}": partial(
                    router_run, url, conn, postmaster, args.jobs, procs, args.router_batch
                )
                for procs in (int(count) for count in args.router_processes.split(","))
            },
        )

        # Then all of them, alternating, so that a machine slower for a while slows each alike.
        results: dict[str, list[Run]] = {family: [] for family in systems}
        for _ in range(args.rounds):
            for family, (_, run) in systems.items():
                results[family].append(run())
        print(f"alternating rounds ({args.rounds}), each system at its best:")
        for family, runs in results.items():
            print(line(systems[family][0], runs))
        if modules is not None and args.graphile_ordered:
            name, _ = systems["Graphile Worker"]
            config = GraphileConfig.parse(args.graphile_ordered)
            ordered = [
                graphile_run(modules, url, conn, postmaster, args.jobs, config, ordered=True)
                for _ in range(args.rounds)
            ]
            print(line(f"{config}, a named queue per record (per-record order)", ordered))
        ours = statistics.median(run.rate for run in results["router"])
        for family, runs in results.items():
            if family != "router":
                print(f"ratio router / {family}: {ours / statistics.median(r.rate for r in runs):.2f}")


def _node_version() -> str:
    if not shutil.which("node"):
        return "absent"
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
