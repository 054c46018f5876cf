"""Routers as real `ipai-bus route` processes: scale-out, SIGKILL and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import requests

from ipai_bus_lib.core.envelope import Envelope

from . import helpers
from .helpers import free_port, wait_until
from .readiness import http_answers, wait_for_server
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
                str(helpers.insert_event(cursor, envelope, idempotency_key=str(uuid.uuid4())).event_id)
            )
    conn.close()
    return ids


def statuses(database_url: str) -> Counter:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select status, attempts from integration.event_state")
        rows = cursor.fetchall()
    conn.close()
    return Counter(rows)


def router_process(
    database_url: str, routes: Path, sink_url: str, log_path: Path, **settings: str
) -> subprocess.Popen:
    """`ipai-bus route` as a real subprocess with ``routes`` (whose sink is SINK_URL, signed
    with SINK_SECRET), its metrics off unless ``settings`` say otherwise, logging to
    ``log_path``."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "IPAI_ROUTES_FILE": str(routes),
        "SINK_URL": sink_url,
        "SINK_SECRET": SINK_SECRET,
        "IPAI_ROUTER_METRICS_PORT": "0",
        **settings,
    }
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "route"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture()
def start_router(clean_bus, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    processes = []

    def start(sink_url: str, **settings: str) -> subprocess.Popen:
        log = tmp_path / f"router-{len(processes)}.log"
        process = router_process(
            clean_bus, routes, sink_url, log, IPAI_ROUTER_POLL_SECONDS="0.2", **settings
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


def test_router_metrics_count_known_traffic_and_health_answers(clean_bus, start_router):
    """3 events delivered and 2 refused for good (400): the scrape says exactly that."""
    conn = psycopg2.connect(clean_bus)
    with conn, conn.cursor() as cursor:
        for number in range(5):
            event_type = "asset.reserved" if number < 3 else "asset.checked_out"
            envelope = Envelope(event_type, "maintenance.equipment", str(number), {"booking_id": 1})
            helpers.insert_event(cursor, envelope, idempotency_key=f"metrics-{number}")
    conn.close()
    port = free_port()

    def reply(request):
        refused = request.json()["type"] == "asset.checked_out"
        return Reply(400, b"no") if refused else Reply(200)

    with HttpSink(reply) as sink:
        start_router(sink.url, IPAI_ROUTER_METRICS_PORT=str(port))
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: statuses(clean_bus) == Counter({("completed", 1): 3, ("dead", 1): 2}),
            timeout=30,
            what="the five events to be settled",
        )
        wait_for_server("the router's endpoints", http_answers(base + "/healthz"))
        assert _get(base + "/readyz") == 200
        metrics = requests.get(base + "/metrics", timeout=5).text
    line = 'ipai_router_deliveries_total{destination="sink",event_type="%s",outcome="%s"} %s'
    assert line % ("asset.reserved", "delivered", "3.0") in metrics
    assert line % ("asset.checked_out", "dead", "2.0") in metrics
    assert 'ipai_router_delivery_seconds_count{destination="sink"} 5.0' in metrics
    assert "ipai_router_claim_batch_size_count" in metrics
    assert 'ipai_router_breaker_open{destination="sink"} 0.0' in metrics
    assert "ipai_outbox_lag_seconds 0.0" in metrics


def _get(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.ConnectionError:
        return 0
