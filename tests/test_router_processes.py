"""Routers as real `ipai-bus route` processes: scale-out, SIGKILL and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import psycopg2
import pytest

from ipai_bus_lib.core.catalog import Envelope
from ipai_bus_lib.storage import outbox

from .helpers import wait_until
from .sinks import HttpSink, Reply

SINK_SECRET = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk="
ROUTES = """
[destinations.sink]
type = "http"
url_env = "SINK_URL"
secret_env = "SINK_SECRET"

[[routes]]
match = "*"
destinations = ["sink"]
"""

pytestmark = pytest.mark.slow


def add_events(database_url: str, count: int) -> list[str]:
    conn = psycopg2.connect(database_url)
    ids = []
    with conn, conn.cursor() as cursor:
        for number in range(count):
            envelope = Envelope(
                "asset.reserved", "maintenance.equipment", str(number), {"booking_id": number}
            )
            ids.append(
                str(outbox.insert_event(cursor, envelope, idempotency_key=str(uuid.uuid4())).event_id)
            )
    conn.close()
    return ids


def statuses(database_url: str) -> Counter:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select status, attempts from integration.outbox")
        rows = cursor.fetchall()
    conn.close()
    return Counter(rows)


@pytest.fixture()
def start_router(clean_bus, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    processes = []

    def start(sink_url: str, **settings: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": clean_bus,
            "IPAI_ROUTES_FILE": str(routes),
            "SINK_URL": sink_url,
            "SINK_SECRET": SINK_SECRET,
            "IPAI_ROUTER_POLL_SECONDS": "0.2",
            **settings,
        }
        log = open(tmp_path / f"router-{len(processes)}.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "route"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def delivered_ids(sink: HttpSink) -> list[str]:
    with sink.lock:
        return [request.headers["webhook-id"] for request in sink.received]


def test_four_workers_deliver_two_thousand_events_exactly_once(clean_bus, start_router):
    ids = add_events(clean_bus, 2000)
    with HttpSink() as sink:
        routers = [start_router(sink.url, IPAI_ROUTER_BATCH_SIZE="50") for _ in range(4)]
        wait_until(
            lambda: (
                statuses(clean_bus).total()
                == sum(
                    count for (status, _), count in statuses(clean_bus).items() if status == "completed"
                )
            ),
            timeout=120,
            interval=0.5,
            what="all 2000 events completed",
        )
        assert statuses(clean_bus) == Counter({("completed", 1): 2000}), "none needed a retry"
        for router in routers:
            router.send_signal(signal.SIGTERM)
        assert [router.wait(timeout=30) for router in routers] == [0, 0, 0, 0]
        received = Counter(delivered_ids(sink))
    assert set(received) == set(ids)
    assert max(received.values()) == 1, "an event was delivered twice"


def test_worker_killed_mid_batch_loses_nothing(clean_bus, start_router):
    ids = add_events(clean_bus, 60)
    with HttpSink(lambda request: Reply(200, delay=0.05)) as sink:
        first = start_router(
            sink.url,
            IPAI_ROUTER_BATCH_SIZE="20",
            IPAI_ROUTER_LEASE_SECONDS="2",
            IPAI_ROUTER_CONCURRENCY="2",
        )
        wait_until(lambda: sink.count() >= 5, what="the first worker to be mid-batch")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert statuses(clean_bus)[("processing", 1)] > 0, "the killed worker held leased rows"
        start_router(sink.url, IPAI_ROUTER_BATCH_SIZE="20", IPAI_ROUTER_CONCURRENCY="4")
        wait_until(
            lambda: all(status == "completed" for status, _ in statuses(clean_bus)),
            timeout=60,
            interval=0.3,
            what="every event completed after the lease",
        )
        received = set(delivered_ids(sink))
    assert received == set(ids), "every event delivered at least once"
    assert not any(status == "processing" for status, _ in statuses(clean_bus))


def test_sigterm_finishes_in_flight_and_hands_back_the_rest(clean_bus, start_router):
    add_events(clean_bus, 20)
    with HttpSink(lambda request: Reply(200, delay=0.4)) as sink:
        router = start_router(sink.url, IPAI_ROUTER_BATCH_SIZE="20", IPAI_ROUTER_CONCURRENCY="2")
        wait_until(lambda: sink.count() >= 2, what="deliveries in flight")
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=20) == 0
        delivered = sink.count()
    counts = statuses(clean_bus)
    assert counts[("completed", 1)] == delivered, "what was in flight finished and was acked"
    assert counts[("pending", 0)] == 20 - delivered, "the rest is pending with no attempt counted"
    assert 2 <= delivered < 20
