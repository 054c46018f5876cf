"""The RabbitMQ destination against a real RabbitMQ node (Debian's rabbitmq-server) of the tests' own."""

from __future__ import annotations

import json
import time

import pytest

from .brokers import RABBITMQ_BIN, RabbitMqNode
from .helpers import assert_routes_check_refuses, free_port
from .test_router import add_events, attempts_of, make_due, make_router, state

pika = pytest.importorskip("pika", reason="RabbitMQ tests skipped: pika is not installed (test extra)")

from ipai_bus_lib.delivery.destinations.rabbitmq import RabbitMqDestination  # noqa: E402

EXCHANGE = "ipai.events"


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory):
    """A RabbitMQ node on free loopback ports, its data in a temporary directory: (url, ctl)."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip(
            "RabbitMQ tests skipped: no rabbitmq-server (make test installs Debian's package as root)"
        )
    node = RabbitMqNode(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
    except RuntimeError as error:
        pytest.fail(str(error))
    yield node.url, node.ctl
    node.stop()


@pytest.fixture
def broker(rabbitmq):
    """The node with a fresh topic exchange and a durable queue bound to every ipai key."""
    url, ctl = rabbitmq
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_delete(EXCHANGE)
    channel.queue_delete("ipai-all")
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare("ipai-all", durable=True)
    yield url, ctl, channel
    try:
        connection.close()
    except pika.exceptions.AMQPError:  # a test had the broker close it
        pass


def bind(channel) -> None:
    channel.queue_bind("ipai-all", EXCHANGE, routing_key="ipai.#")


def received(channel) -> list:
    messages = []
    while True:
        method, properties, body = channel.basic_get("ipai-all", auto_ack=True)
        if method is None:
            return messages
        messages.append((method.routing_key, properties, json.loads(body)))


def drain(router, database, event_ids, rounds: int = 10) -> None:
    for _ in range(rounds):
        router.run_once()
        if all(state(database, event_id)["status"] in ("completed", "dead") for event_id in event_ids):
            return


def test_events_are_confirmed_onto_the_queue_in_record_order(database, broker):
    url, _, channel = broker
    bind(channel)
    first = add_events(database, 3, aggregate="7")
    second = add_events(database, 2, aggregate="8")
    destination = RabbitMqDestination("queue", url, exchange=EXCHANGE)
    drain(make_router(database, {"queue": destination}), database, first + second)
    destination.close()

    messages = received(channel)
    by_key: dict[str, list[str]] = {}
    for key, properties, _ in messages:
        by_key.setdefault(key, []).append(properties.message_id)
    assert by_key == {
        "ipai.odoo.hr%2Eexpense.7": [str(event_id) for event_id in first],
        "ipai.odoo.hr%2Eexpense.8": [str(event_id) for event_id in second],
    }
    _, properties, body = next(m for m in messages if m[1].message_id == str(first[0]))
    assert properties.delivery_mode == 2 and properties.content_type == "application/json"
    assert properties.type == "expense.submitted"
    assert properties.headers == {
        "Ipai-Event-Type": "expense.submitted",
        "Ipai-Source": "odoo",
        "Ipai-Aggregate-Type": "hr.expense",
        "Ipai-Aggregate-Id": "7",
    }
    assert body["data"]["event_id"] == str(first[0]) and body["data"]["payload"]["amount"] == 100
    for event_id in first + second:
        assert state(database, event_id)["status"] == "completed"
        assert attempts_of(database, event_id) == [("queue", "delivered", None, None)]


def test_a_message_no_queue_takes_is_retried_until_one_is_bound(database, broker):
    url, _, channel = broker
    [event_id] = add_events(database)
    router = make_router(database, {"queue": RabbitMqDestination("queue", url, exchange=EXCHANGE)})
    router.run_once()
    waiting = state(database, event_id)
    assert waiting["status"] == "failed"
    assert (
        f"no queue takes routing key ipai.odoo.hr%2Eexpense.0 on exchange {EXCHANGE}"
        in waiting["last_error"]
    )
    bind(channel)
    make_due(database)
    router.run_once()
    assert state(database, event_id)["status"] == "completed"
    assert [properties.message_id for _, properties, _ in received(channel)] == [str(event_id)]


def test_a_missing_exchange_is_retried_and_named(database, broker):
    url, _, _ = broker
    [event_id] = add_events(database)
    make_router(database, {"queue": RabbitMqDestination("queue", url, exchange="nowhere")}).run_once()
    waiting = state(database, event_id)
    assert waiting["status"] == "failed" and "no exchange 'nowhere'" in waiting["last_error"]


def test_connections_the_broker_closed_are_replaced_at_once(database, broker):
    url, ctl, channel = broker
    bind(channel)
    destination = RabbitMqDestination("queue", url, exchange=EXCHANGE)
    router = make_router(database, {"queue": destination})
    [first] = add_events(database, aggregate="1")
    router.run_once()
    closed = ctl("close_all_connections", "closed by the test")
    assert closed.returncode == 0, closed.stderr
    time.sleep(0.5)
    [second] = add_events(database, aggregate="2")
    router.run_once()
    destination.close()
    assert state(database, first)["status"] == state(database, second)["status"] == "completed"


def test_an_unreachable_broker_is_retried(database):
    [event_id] = add_events(database)
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    make_router(
        database, {"queue": RabbitMqDestination("queue", url, exchange=EXCHANGE, timeout=2)}
    ).run_once()
    waiting = state(database, event_id)
    assert waiting["status"] == "failed" and "cannot be reached" in waiting["last_error"]


def test_routes_check_builds_a_rabbitmq_destination_and_refuses_wrong_settings(tmp_path):
    routes = tmp_path / "routes.toml"
    good = (
        '[destinations.queue]\ntype = "rabbitmq"\nurl = "amqp://guest:guest@127.0.0.1:5672/%2F"\n'
        f'exchange = "{EXCHANGE}"\n\n[[routes]]\nmatch = "*"\ndestinations = ["queue"]\n'
    )
    assert_routes_check_refuses(
        routes,
        good,
        [
            ('url = "http://127.0.0.1:5672"', "url must be amqp://"),
            ('exchange = ""', "needs exchange"),
        ],
    )


def test_a_broker_that_never_answers_fails_the_delivery_within_its_budget(database):
    """A listener that accepts and stays silent held a delivery 15 s (pika's own handshake
    timeout) and escaped as an unexpected error; now it is a retry, inside the budget."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    [event_id] = add_events(database)
    url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F"
    started = time.monotonic()
    make_router(
        database, {"queue": RabbitMqDestination("queue", url, exchange=EXCHANGE, timeout=2)}
    ).run_once()
    assert time.monotonic() - started < 6
    waiting = state(database, event_id)
    assert waiting["status"] == "failed" and "cannot be reached" in waiting["last_error"]
    silent.close()
