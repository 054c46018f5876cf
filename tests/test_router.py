"""The router on a real PostgreSQL delivering to real servers on loopback (HTTP sink, aiosmtpd)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header

import pytest
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.delivery.destinations import (
    ConsoleDestination,
    DeliveryFailed,
    EmailDestination,
    HttpForwardDestination,
    MattermostDestination,
    SmtpDefaults,
    build_destination,
)
from ipai_bus_lib.delivery.router import Router, RouterConfig
from ipai_bus_lib.delivery.routes import DestinationSpec, Route, RoutingTable, parse_routing
from ipai_bus_lib.storage import outbox

from . import helpers
from .helpers import cli, free_port
from .sinks import HttpSink, Reply, TricklingSmtpServer
from .test_message_safety import MENTION_LIKE, linkified, markdown_links_and_text

FORWARD_SECRET = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk="  # base64 of a test-only key


def routing_to(*names: str, pattern: str = "*") -> RoutingTable:
    return RoutingTable(
        (Route(pattern, names),), {name: DestinationSpec(name, "console") for name in names}
    )


def make_router(
    database, destinations: dict, *, routing: RoutingTable | None = None, **config
) -> Router:
    settings = {
        "worker": "test-router",
        "retry_delays": (2, 4, 6),
        "listen": False,
        "poll_seconds": 0.2,
        **config,
    }
    return Router(RouterConfig(**settings), database, routing or routing_to(*destinations), destinations)


def add_events(
    database,
    count: int = 1,
    *,
    event_type: str = "expense.submitted",
    aggregate: str | None = None,
    max_attempts: int = 4,
) -> list[uuid.UUID]:
    ids = []
    with database.transaction() as cursor:
        for number in range(count):
            envelope = Envelope(
                event_type,
                "hr.expense",
                aggregate or str(number),
                {
                    "expense_id": number,
                    "employee_name": "Maria Santos",
                    "amount": 100 + number,
                    "currency": "PHP",
                },
            )
            ids.append(
                helpers.insert_event(
                    cursor, envelope, idempotency_key=str(uuid.uuid4()), max_attempts=max_attempts
                ).event_id
            )
    return ids


def state(database, event_id) -> dict:
    """The event's status (completed once it left the outbox), attempts, last error, due time."""
    with database.transaction() as cursor:
        cursor.execute(
            "select s.status, s.attempts, s.last_error,"
            " extract(epoch from o.available_at - now()) as due_in"
            " from integration.event_state s left join integration.outbox o on o.id = s.id"
            " where s.id = %s",
            (event_id,),
        )
        names = [column.name for column in cursor.description]
        return dict(zip(names, cursor.fetchone()))


def attempts_of(database, event_id) -> list[tuple]:
    with database.transaction() as cursor:
        cursor.execute(
            "select destination, outcome, http_status, error from"
            " integration.delivery_attempts where event_id = %s order by id",
            (event_id,),
        )
        return cursor.fetchall()


def make_due(database) -> None:
    with database.transaction() as cursor:
        cursor.execute(
            "update integration.outbox set available_at = now() where status in ('pending', 'failed')"
        )


# --- Mattermost ---------------------------------------------------------------------------------


def test_mattermost_receives_the_formatted_message(database):
    with HttpSink() as sink:
        destination = MattermostDestination("mm", sink.url, channel="finance-ops")
        router = make_router(database, {"mm": destination}, odoo_base_url="https://erp.example.ph")
        [event_id] = add_events(database)
        assert router.run_once() == 1
    posted = sink.received[0].json()
    assert posted["channel"] == "finance-ops" and posted["username"] == "IPAI Bus"
    assert posted["text"].startswith("📝 **Expense submitted**")
    assert "https://erp.example.ph/odoo/hr.expense/0" in posted["text"]
    assert state(database, event_id)["status"] == "completed"
    assert attempts_of(database, event_id) == [("mm", "delivered", 200, None)]


def test_server_error_is_retried_on_the_schedule_then_dead(database):
    with HttpSink(lambda request: Reply(502, b"bad gateway")) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        [event_id] = add_events(database)
        for expected_delay in (2, 4, 6):
            router.run_once()
            now = state(database, event_id)
            assert now["status"] == "failed"
            assert now["due_in"] == pytest.approx(expected_delay, abs=1.0), "back-off schedule"
            make_due(database)
        router.run_once()
    final = state(database, event_id)
    assert (final["status"], final["attempts"]) == ("dead", 4)
    assert "HTTP 502: bad gateway" in final["last_error"]
    assert [row[1] for row in attempts_of(database, event_id)] == ["failed"] * 4
    assert sink.count() == 4


def test_too_many_requests_honours_retry_after(database):
    with HttpSink(lambda request: Reply(429, b"slow down", {"Retry-After": "40"})) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        [event_id] = add_events(database)
        router.run_once()
    now = state(database, event_id)
    assert now["status"] == "failed" and now["due_in"] == pytest.approx(40, abs=2)


def test_client_error_that_retrying_cannot_fix_is_dead_at_once(database):
    with HttpSink(
        lambda request: Reply(400, b'{"message":"Unable to parse the incoming data"}')
    ) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        [event_id] = add_events(database)
        router.run_once()
    final = state(database, event_id)
    assert (final["status"], final["attempts"]) == ("dead", 1)
    assert "HTTP 400" in final["last_error"] and "Unable to parse" in final["last_error"]


def test_timeout_is_retried(database):
    with HttpSink(lambda request: Reply(200, delay=2.0)) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url, timeout=0.3)})
        [event_id] = add_events(database)
        router.run_once()
    now = state(database, event_id)
    assert now["status"] == "failed" and "no complete answer within 0.3 s" in now["last_error"]


def test_connection_closed_by_the_server_while_idle_is_reopened(database):
    with HttpSink(idle_timeout=0.2) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        first = add_events(database, aggregate="a")[0]
        router.run_once()
        time.sleep(0.6)  # the sink has closed the kept-alive connection by now
        second = add_events(database, aggregate="b")[0]
        router.run_once()
    assert [state(database, event_id)["status"] for event_id in (first, second)] == [
        "completed",
        "completed",
    ]
    assert state(database, second)["attempts"] == 1 and sink.count() == 2


def test_connection_refused_is_retried(database):
    router = make_router(database, {"mm": MattermostDestination("mm", "http://127.0.0.1:1/hook")})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "failed"


# --- HTTP forward (Standard Webhooks) -------------------------------------------------------------


def test_http_forward_is_verifiable_with_the_standardwebhooks_library(database):
    with HttpSink() as sink:
        router = make_router(database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)})
        [event_id] = add_events(database)
        router.run_once()
    request = sink.received[0]
    verified = Webhook(FORWARD_SECRET).verify(request.body, request.headers)
    assert verified["type"] == "expense.submitted"
    assert verified["data"]["event_id"] == str(event_id) == request.headers["webhook-id"]
    assert verified["data"]["payload"]["employee_name"] == "Maria Santos"
    tampered = request.body.replace(b"Maria", b"Mario")
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(FORWARD_SECRET).verify(tampered, request.headers)


def test_an_event_every_destination_already_has_is_completed_not_sent_again(database):
    """Its delivered attempt recorded but its acknowledgement not (a first claim's, written by
    hand): the router completes it at the next claim instead of sending it again."""
    with HttpSink() as sink:
        router = make_router(database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)})
        [event_id] = add_events(database)
        with database.transaction() as cursor:
            cursor.execute("update integration.outbox set attempts = 1 where id = %s", (event_id,))
            cursor.execute(
                "insert into integration.delivery_attempts"
                " (event_id, attempt, worker, destination, outcome) values (%s, 1, 'gone', 'n8n', 'delivered')",
                (event_id,),
            )
        router.run_once()
    assert state(database, event_id)["status"] == "completed"
    assert sink.count() == 0 and [a[1] for a in attempts_of(database, event_id)] == ["delivered"]


def test_a_peer_answering_with_a_nul_byte_gets_a_retry_not_a_dead_event(database):
    """PostgreSQL text cannot hold NUL: an error carrying the peer's body used to fail the
    settle, and the fallback then gave the event up as unrecordable."""
    with HttpSink(lambda request: Reply(503, b"busy\x00\x00 try later")) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        [event_id] = add_events(database)
        router.run_once()
    now = state(database, event_id)
    assert now["status"] == "failed", now["last_error"]
    assert "HTTP 503: busy try later" in now["last_error"]
    assert attempts_of(database, event_id) == [("mm", "failed", 503, "HTTP 503: busy try later")]


def test_http_forward_refusal_is_dead_and_a_404_or_server_error_retried(database):
    """Only an answer that refuses the event itself ends it: a 404 (an n8n workflow not yet
    published) and a 503 are retried on the schedule like any other failure."""
    replies = iter([Reply(422, b"bad event"), Reply(404, b"no such hook"), Reply(503, b"busy")])
    with HttpSink(lambda request: next(replies)) as sink:
        router = make_router(
            database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)}, concurrency=1
        )
        statuses = []
        for aggregate in ("a", "b", "c"):
            [event] = add_events(database, aggregate=aggregate)
            router.run_once()
            statuses.append(state(database, event)["status"])
    assert statuses == ["dead", "failed", "failed"]


def test_a_404_is_retried_until_the_attempts_run_out_then_dead(database):
    with HttpSink(lambda request: Reply(404, b"workflow not published")) as sink:
        router = make_router(
            database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)}, concurrency=1
        )
        [event] = add_events(database, aggregate="a")
        seen = []
        for _ in range(4):
            with database.transaction() as cursor:  # due again now, as its retry would be
                cursor.execute(
                    "update integration.outbox set available_at = now() where id = %s", (event,)
                )
            router.run_once()
            seen.append(state(database, event)["status"])
    assert seen == ["failed", "failed", "failed", "dead"], "four attempts, then an operator's"
    assert len(sink.received) == 4


def test_the_routes_file_sets_a_destinations_permanent_statuses():
    document = {
        "destinations": {
            "n8n": {
                "type": "http",
                "url": "http://127.0.0.1:9/h",
                "secret": FORWARD_SECRET,
                "permanent_statuses": [400, 410],
            },
            "mm": {"type": "mattermost", "url": "http://127.0.0.1:9/m"},
        },
        "routes": [{"match": "*", "destinations": ["n8n", "mm"]}],
    }
    routing = parse_routing(document, {})
    smtp = SmtpDefaults("127.0.0.1", 25, "none", None, None, "bus@example.ph")
    built = {name: build_destination(spec, {}, smtp=smtp) for name, spec in routing.destinations.items()}
    assert built["n8n"].permanent == {400, 410}
    assert built["mm"].permanent == {400, 413}, "Mattermost's own set when the file is silent"


def test_a_destination_may_name_its_own_permanent_statuses(database):
    refusing = HttpForwardDestination("n8n", "", FORWARD_SECRET, permanent=frozenset({404}))
    with HttpSink(lambda request: Reply(404, b"never")) as sink:
        refusing.url = sink.url
        router = make_router(database, {"n8n": refusing}, concurrency=1)
        [event] = add_events(database, aggregate="a")
        router.run_once()
    assert state(database, event)["status"] == "dead"


# --- e-mail (aiosmtpd) ----------------------------------------------------------------------------


class SmtpRecorder:
    def __init__(self, reply: str | None = None) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.reply = reply

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's naming
        if self.reply:
            return self.reply
        self.messages.append((envelope.rcpt_tos, envelope.content))
        return "250 OK"


@pytest.fixture()
def smtp_server():
    def start(reply: str | None = None):
        recorder = SmtpRecorder(reply)
        port = free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return recorder, port

    started = []
    yield start
    for controller in started:
        controller.stop()


def email_to(port: int, *, security: str = "none") -> EmailDestination:
    return EmailDestination(
        "ap",
        host="127.0.0.1",
        port=port,
        security=security,
        sender="bus@example.ph",
        recipients=["ap@example.ph"],
    )


def test_email_sends_one_message_with_text_and_html(database, smtp_server):
    recorder, port = smtp_server()
    router = make_router(database, {"ap": email_to(port)})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "completed"
    [(recipients, raw)] = recorder.messages
    mail = message_from_bytes(raw)
    assert recipients == ["ap@example.ph"]
    assert str(make_header(decode_header(mail["Subject"]))) == "📝 Expense submitted"
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in mail.walk()
        if not part.is_multipart()
    }
    assert "Maria Santos" in parts["text/plain"] and "**" not in parts["text/plain"]
    assert "<strong>Employee:</strong>" in parts["text/html"]


def test_an_smtp_reply_cut_short_is_not_a_delivery(database):
    """A "250 2.0" and then the end of the connection: no complete positive answer."""
    with TricklingSmtpServer("cut") as server:
        router = make_router(database, {"ap": email_to(server.port)})
        [event_id] = add_events(database)
        router.run_once()
    assert state(database, event_id)["status"] == "failed"
    [(_, outcome, _, error)] = attempts_of(database, event_id)
    assert outcome != "delivered" and "ended mid-line" in error, (outcome, error)


def test_email_over_implicit_tls_is_delivered(database, tmp_path):
    """security = "tls": the TLS handshake happens on the budgeted socket, then the dialogue."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    recorder, port = SmtpRecorder(), free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ssl_context=server_context)
    controller.start()
    try:
        destination = EmailDestination(
            "ap",
            host="127.0.0.1",
            port=port,
            security="tls",
            sender="bus@example.ph",
            recipients=["ap@example.ph"],
            tls_context=ssl.create_default_context(cafile=str(cert)),
        )
        router = make_router(database, {"ap": destination})
        [event_id] = add_events(database)
        router.run_once()
    finally:
        controller.stop()
    assert state(database, event_id)["status"] == "completed"
    assert len(recorder.messages) == 1


def test_email_permanent_refusal_is_dead(database, smtp_server):
    _, port = smtp_server("550 mailbox unavailable")
    router = make_router(database, {"ap": email_to(port)})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "dead"
    assert "SMTP 550" in state(database, event_id)["last_error"]


def test_email_transient_refusal_is_retried(database, smtp_server):
    _, port = smtp_server("451 try again later")
    router = make_router(database, {"ap": email_to(port)})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "failed"


def test_email_starttls_refused_by_a_plain_server_is_retried_not_crashed(database, smtp_server):
    _, port = smtp_server()
    router = make_router(database, {"ap": email_to(port, security="starttls")})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "failed"
    assert "SMTP" in state(database, event_id)["last_error"]


# --- console, routing, ordering, breakers ---------------------------------------------------------


HOSTILE_EXPENSE = {
    "expense_id": 7,
    "employee_name": "Juan [Approve now](https://evil.example/sso) @channel",
    "description": "![x](https://evil.example/pixel.png) "
    "[Open in Odoo](https://evil.example/odoo/hr.expense/7) <!channel> @all",
    "category": "[click](javascript:alert(document.cookie))",
    "amount": 1250.5,
    "currency": "PHP",
}


def test_a_hostile_expense_reaches_the_channel_and_the_mailbox_as_data(database, smtp_server):
    """#22 item 1 from the outside: what Mattermost and the SMTP server receive has one link, ours."""
    recorder, port = smtp_server()
    with HttpSink() as sink:
        destinations = {"mm": MattermostDestination("mm", sink.url), "ap": email_to(port)}
        router = make_router(database, destinations, odoo_base_url="https://erp.example.ph")
        with database.transaction() as cursor:
            envelope = Envelope("expense.submitted", "hr.expense", "7", HOSTILE_EXPENSE)
            helpers.insert_event(cursor, envelope, idempotency_key=str(uuid.uuid4()))
        assert router.run_once() == 1
    own = ["https://erp.example.ph/odoo/hr.expense/7"]
    posted = sink.received[0].json()["text"]
    links, shown = markdown_links_and_text(posted)
    assert links == own and not MENTION_LIKE.search(shown) and "@" not in posted
    assert "Juan" in shown and "Approve now" in shown, "the text itself still reads"
    [(_, raw)] = recorder.messages
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message_from_bytes(raw).walk()
        if not part.is_multipart()
    }
    assert re.findall(r"<a [^>]*>", parts["text/html"]) == [f'<a href="{own[0]}">']
    assert "javascript:" not in parts["text/html"] and "javascript:" not in parts["text/plain"]
    assert linkified(parts["text/plain"]) == own


@pytest.mark.parametrize("slow", ["greeting", "data"])
def test_an_smtp_server_that_trickles_is_cut_at_the_budget_and_never_delivered(database, slow):
    """#22 item 4: the greeting, or the 250 after DATA, arrives a byte every 0.4 s; the budget
    of 2 s covers every byte, and a reply cut short is a failure to retry, not a delivery."""
    with TricklingSmtpServer(slow) as server:
        destination = email_to(server.port)
        destination.timeout = 2.0
        router = make_router(database, {"ap": destination})
        [event_id] = add_events(database)
        started = time.monotonic()
        router.run_once()
        took = time.monotonic() - started
    assert took < 6.0, f"the delivery took {took:.1f} s with a 2 s budget (a trickle takes 9.6)"
    row = state(database, event_id)
    assert row["status"] == "failed" and row["attempts"] == 1, row
    [(name, outcome, _, error)] = attempts_of(database, event_id)
    assert outcome != "delivered" and "did not finish within 2 s" in error, (outcome, error)


def test_console_prints_the_message(database):
    stream = io.StringIO()
    router = make_router(database, {"console": ConsoleDestination("console", stream)})
    add_events(database)
    router.run_once()
    assert "📝 **Expense submitted**" in stream.getvalue()


def test_unrouted_event_is_dead_with_the_reason_not_dropped(database):
    stream = io.StringIO()
    router = make_router(
        database,
        {"console": ConsoleDestination("console", stream)},
        routing=routing_to("console", pattern="asset.*"),
    )
    [event_id] = add_events(database)
    router.run_once()
    final = state(database, event_id)
    assert (
        final["status"] == "dead"
        and "no route matches event type expense.submitted" in final["last_error"]
    )
    assert attempts_of(database, event_id)[0][1] == "unrouted"


@pytest.mark.parametrize(
    "awkward",
    [
        "502 from upstream:\tpath C:\\spool\\n\nline two\r\nend \\N \x00done",
        'upstream said {"error": "a, b"} \\" and \\\\ then }{ 100%s %(worker)s',
        "NULL",
    ],
    ids=["copy-escapes", "array-literal-escapes", "the-word-null"],
)
def test_attempt_history_keeps_an_error_text_exactly_whatever_its_characters(database, awkward):
    """Attempts are written as array literals: quotes, backslashes, braces, commas, the word
    NULL and placeholder-like percent signs inside an error come back as they were (a NUL,
    which no PostgreSQL text can hold, is dropped)."""

    class FailsAwkwardly(ConsoleDestination):
        def deliver(self, event, message):
            raise DeliveryFailed(awkward, retryable=False, http_status=502)

    router = make_router(database, {"odd": FailsAwkwardly("odd", io.StringIO())})
    [event_id] = add_events(database)
    router.run_once()
    [(destination, outcome, http_status, error)] = attempts_of(database, event_id)
    assert (destination, outcome, http_status) == ("odd", "dead", 502)
    assert error == awkward.replace("\x00", "")


def test_an_attempt_the_table_cannot_hold_stops_only_its_own_event(database):
    """A batch's attempts go in one statement; one the table refuses (an HTTP status beyond an
    integer) fails it, and the batch is settled event by event: the others are delivered and
    recorded, the odd one is dead with the reason."""

    class OneAnswersStrangely(ConsoleDestination):
        def deliver(self, event, message):
            if event.payload["amount"] == 101:
                raise DeliveryFailed("a status no HTTP has", retryable=False, http_status=2**40)

    router = make_router(database, {"odd": OneAnswersStrangely("odd", io.StringIO())})
    first, strange, third = add_events(database, 3)
    router.run_once()
    for event_id in (first, third):
        assert state(database, event_id)["status"] == "completed"
        assert attempts_of(database, event_id) == [("odd", "delivered", None, None)]
    final = state(database, strange)
    assert final["status"] == "dead"
    assert "could not record its outcome" in final["last_error"]
    assert attempts_of(database, strange) == []


def test_an_error_with_a_lone_surrogate_is_recorded_and_retried(database):
    """A str PostgreSQL cannot take (not UTF-8) in an error must not turn a retry into a dead
    event any more than a NUL does."""

    class FailsWithUndecodableText(ConsoleDestination):
        def deliver(self, event, message):
            raise DeliveryFailed("upstream said caf\udce9 is down", http_status=503)

    router = make_router(database, {"odd": FailsWithUndecodableText("odd", io.StringIO())})
    [event_id] = add_events(database)
    router.run_once()
    assert state(database, event_id)["status"] == "failed"
    assert attempts_of(database, event_id) == [("odd", "failed", 503, "upstream said caf is down")]


def test_aggregate_order_holds_when_the_first_event_fails_twice(database):
    failures = {"left": 2}

    def respond(request):
        if request.json()["data"]["payload"]["amount"] == 100 and failures["left"]:
            failures["left"] -= 1
            return Reply(500, b"down")
        return Reply(200)

    with HttpSink(respond) as sink:
        router = make_router(database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)})
        first = add_events(database, aggregate="sheet-9")[0]
        with database.transaction() as cursor:
            second = helpers.insert_event(
                cursor,
                Envelope("expense.approved", "hr.expense", "sheet-9", {"amount": 200}),
                idempotency_key="second",
            ).event_id
        for _ in range(6):
            router.run_once()
            make_due(database)
    delivered = [
        request.json()["data"]["event_id"]
        for request in sink.received
        if request.json()["data"]["payload"]["amount"] in (100, 200)
    ]
    assert delivered == [str(first)] * 3 + [str(second)], "the second event waited for the first"
    assert state(database, second)["status"] == "completed"


def test_dead_event_stops_blocking_its_aggregate(database):
    with HttpSink(
        lambda request: (
            Reply(422, b"refused") if request.json()["data"]["payload"]["amount"] == 100 else Reply(200)
        )
    ) as sink:
        router = make_router(database, {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)})
        first = add_events(database, aggregate="sheet-1")[0]
        with database.transaction() as cursor:
            second = helpers.insert_event(
                cursor,
                Envelope("expense.paid", "hr.expense", "sheet-1", {"amount": 200}),
                idempotency_key="2nd",
            ).event_id
        router.run_once()
        router.run_once()
    assert state(database, first)["status"] == "dead"
    assert state(database, second)["status"] == "completed"


def test_partial_delivery_is_not_repeated_on_retry(database):
    good_stream = io.StringIO()
    with HttpSink(lambda request: Reply(503)) as sink:
        destinations = {
            "console": ConsoleDestination("console", good_stream),
            "mm": MattermostDestination("mm", sink.url),
        }
        router = make_router(database, destinations, routing=routing_to("console", "mm"))
        [event_id] = add_events(database)
        router.run_once()
        make_due(database)
        router.run_once()
    assert good_stream.getvalue().count("Expense submitted") == 1, "console got it exactly once"
    assert [row[:2] for row in attempts_of(database, event_id)] == [
        ("console", "delivered"),
        ("mm", "failed"),
        ("mm", "failed"),
    ]


def test_destination_reached_before_a_stop_is_not_sent_again(database):
    """A router stopping part-way hands the event back (attempt given back); the next router
    delivers only to the destinations not yet reached."""
    stream = io.StringIO()

    class StopsTheRouter(ConsoleDestination):
        def deliver(self, event, message):
            delivered = super().deliver(event, message)
            first.stop()  # SIGTERM arrives right after this delivery
            return delivered

    with HttpSink() as sink:
        routing = routing_to("console", "mm")
        first = make_router(
            database,
            {"console": StopsTheRouter("console", stream), "mm": MattermostDestination("mm", sink.url)},
            routing=routing,
            concurrency=1,
        )
        [event_id] = add_events(database)
        first.run_once()
        assert (state(database, event_id)["status"], state(database, event_id)["attempts"]) == (
            "pending",
            0,
        ), "handed back with its attempt given back"
        second = make_router(
            database,
            {
                "console": ConsoleDestination("console", stream),
                "mm": MattermostDestination("mm", sink.url),
            },
            routing=routing,
        )
        second.run_once()
    assert stream.getvalue().count("Expense submitted") == 1, "the console got it once"
    assert sink.count() == 1 and state(database, event_id)["status"] == "completed"


def test_circuit_breaker_pauses_a_failing_destination_without_spending_attempts(database):
    with HttpSink(lambda request: Reply(503)) as sink:
        router = make_router(
            database,
            {"mm": MattermostDestination("mm", sink.url)},
            breaker_threshold=2,
            breaker_cooldown_seconds=60,
            concurrency=1,
            batch_size=1,
        )
        ids = add_events(database, 4)
        for _ in range(4):
            router.run_once()
    assert sink.count() == 2, "after two failures the destination is paused"
    waiting = [state(database, event_id) for event_id in ids[2:]]
    assert all(row["attempts"] == 0 and row["due_in"] > 50 for row in waiting), waiting
    with database.transaction() as cursor:
        cursor.execute("select state, failures, last_error from integration.destination_state")
        assert cursor.fetchone()[:2] == ("open", 2)


def test_circuit_closes_after_a_successful_trial(database):
    replies = iter([Reply(503), Reply(200), Reply(200)])
    with HttpSink(lambda request: next(replies)) as sink:
        router = make_router(
            database,
            {"mm": MattermostDestination("mm", sink.url)},
            breaker_threshold=1,
            breaker_cooldown_seconds=0.5,
            concurrency=1,
            batch_size=1,
        )
        add_events(database, 2)
        router.run_once()
        time.sleep(0.6)
        make_due(database)
        router.run_once()
        router.run_once()
    with database.transaction() as cursor:
        cursor.execute("select state from integration.destination_state")
        assert cursor.fetchone() == ("closed",)
    assert sink.count() == 3


def test_rate_limit_spaces_deliveries(database):
    from ipai_bus_lib.delivery.destinations import TokenBucket

    with HttpSink() as sink:
        destinations = {"mm": MattermostDestination("mm", sink.url)}
        router = Router(
            RouterConfig(worker="w", listen=False, batch_size=10),
            database,
            routing_to("mm"),
            destinations,
            {"mm": TokenBucket(20, 1)},
        )
        add_events(database, 6)
        router.run_once()
    times = sorted(request.at for request in sink.received)
    assert times[-1] - times[0] >= 5 / 20 * 0.9, "6 deliveries at 20/s with burst 1 take >= 0.25 s"


@contextlib.contextmanager
def running(router: Router) -> Iterator[None]:
    """The router's loop in a thread for the block; stopped and joined after it."""
    thread = threading.Thread(target=router.run)
    thread.start()
    try:
        yield
    finally:
        router.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_notify_wakes_a_waiting_router_at_once(database):
    with HttpSink() as sink:
        router = make_router(
            database, {"mm": MattermostDestination("mm", sink.url)}, listen=True, poll_seconds=30
        )
        with running(router):
            time.sleep(0.5)  # the router is now waiting on LISTEN, its poll 30 s away
            started = time.monotonic()
            add_events(database)
            while sink.count() == 0 and time.monotonic() - started < 10:
                time.sleep(0.01)
            assert sink.count() == 1
            assert time.monotonic() - started < 2, "NOTIFY, not the 30 s poll, woke the router"


def test_a_router_told_not_to_listen_polls_at_its_own_interval(database):
    """IPAI_ROUTER_LISTEN=0 with a 30 s poll means a claim every 30 s, not the 0.5 s a router
    falls back to when notifications it listens for never arrive (behind a pooler)."""
    with HttpSink() as sink:
        router = make_router(
            database, {"mm": MattermostDestination("mm", sink.url)}, listen=False, poll_seconds=30
        )
        with running(router):
            time.sleep(0.5)  # past its first claim, waiting out the 30 s poll
            add_events(database)
            time.sleep(1.5)  # three of the pooled fallback's polls
            assert router.poll_seconds == 30
            assert sink.count() == 0, "the event waits for the configured poll"


class StopsTheRouterAfter:
    """A destination that accepts events and asks the router to stop at the n-th one."""

    needs_message = False
    waits_on_network = False

    def __init__(self, name: str, count: int) -> None:
        self.name, self.count, self.delivered, self.router = name, count, 0, None

    def deliver(self, event, message) -> None:
        self.delivered += 1
        if self.delivered == self.count:
            self.router.stop()

    def close(self) -> None:
        pass


def test_a_stopping_router_hands_back_the_batch_it_claimed_ahead(database):
    """With a backlog the next batch is claimed while one is delivered; a stop gives it back
    at once, attempts untouched, instead of leaving it to its leases."""
    ids = add_events(database, 60)
    destination = StopsTheRouterAfter("stopper", count=5)
    router = make_router(database, {"stopper": destination}, batch_size=10)
    destination.router = router
    thread = threading.Thread(target=router.run)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    states = [state(database, event_id) for event_id in ids]
    statuses = [s["status"] for s in states]
    assert "processing" not in statuses, "nothing is left to a lease"
    assert statuses.count("completed") == destination.delivered >= 5
    assert all(s["attempts"] == 0 for s in states if s["status"] == "pending"), (
        "events claimed but never started got their attempt back"
    )


def test_forward_document_is_json(database):
    from ipai_bus_lib.delivery.destinations import forward_document

    add_events(database)
    with database.transaction() as cursor:
        [event] = outbox.claim(cursor, worker="w")
    assert json.loads(json.dumps(forward_document(event)))["type"] == "expense.submitted"


# --- telling the operator: dead events logged and counted -----------------------------------------


def test_each_event_gone_dead_is_one_log_line_and_counted_by_reason(database, caplog):
    from ipai_bus_lib.delivery.router.metrics import RouterMetrics

    def reply(request) -> Reply:  # the record "r" is refused, the others fail
        refused_record = b'"aggregate_id":"r"' in request.body
        return Reply(400, b"refused: bad field") if refused_record else Reply(500, b"down")

    with HttpSink(reply) as sink:
        destinations = {"n8n": HttpForwardDestination("n8n", sink.url, FORWARD_SECRET)}
        metrics = RouterMetrics(database, lambda: {})
        router = Router(
            RouterConfig(worker="teller", retry_delays=(2,), listen=False, concurrency=1),
            database,
            routing_to("n8n", pattern="expense.*"),
            destinations,
            metrics=metrics,
        )
        [refused] = add_events(database, aggregate="r")
        [exhausted] = add_events(database, aggregate="x", max_attempts=1)
        [unrouted] = add_events(database, aggregate="u", event_type="asset.reserved")
        with caplog.at_level("WARNING", logger="ipai_bus.router"):
            for _ in range(3):
                router.run_once()
    lines = [r.getMessage() for r in caplog.records if '"event": "event_dead"' in r.getMessage()]
    assert all("\n" not in line for line in lines) and len(lines) == 3
    deaths = {entry["event_id"]: entry for entry in map(json.loads, lines)}
    assert set(deaths) == {str(refused), str(exhausted), str(unrouted)}
    assert deaths[str(refused)]["reason"] == "refused"
    assert deaths[str(refused)]["error"].startswith("n8n: HTTP 400")
    assert deaths[str(exhausted)]["reason"] == "attempts_exhausted"
    assert (deaths[str(exhausted)]["attempt"], deaths[str(exhausted)]["max_attempts"]) == (1, 1)
    assert deaths[str(unrouted)]["reason"] == "no_route"
    assert deaths[str(unrouted)]["record"] == "hr.expense/u"
    assert deaths[str(unrouted)]["next"] == f"ipai-bus events show {unrouted}"
    text = metrics.render()[0].decode()
    for reason, count in (("refused", 1), ("attempts_exhausted", 1), ("no_route", 1), ("unreadable", 0)):
        assert f'ipai_router_dead_events_total{{reason="{reason}"}} {count}.0' in text
    assert {state(database, e)["status"] for e in (refused, exhausted, unrouted)} == {"dead"}


def test_an_operator_resumes_a_paused_destination_at_once(database, clean_bus):
    """`ipai-bus resume` ends a pause the breaker would have held for five minutes: the next
    delivery is the trial, and the request is audited."""
    answers = iter([Reply(503, b"down for a moment")])
    with HttpSink(lambda request: next(answers, Reply(200, b"ok"))) as sink:
        router = make_router(
            database,
            {"mm": MattermostDestination("mm", sink.url)},
            breaker_threshold=1,
            breaker_cooldown_seconds=300,
            concurrency=1,
        )
        [first] = add_events(database, aggregate="a")
        router.run_once()  # 503: the breaker opens for 300 s
        [second] = add_events(database, aggregate="b")
        make_due(database)
        router.run_once()
        assert sink.count() == 1, "paused: nothing more is sent"
        assert state(database, second)["status"] == "pending"

        retried = cli("retry", str(first), env={"DATABASE_URL": clean_bus})
        assert retried.returncode == 0 and "paused destinations (mm)" in retried.stdout, retried.stderr
        assert "`ipai-bus resume NAME` makes the trial now" in retried.stdout
        refused = cli("resume", "nowhere", env={"DATABASE_URL": clean_bus})
        assert refused.returncode == 2 and "nowhere is not paused" in refused.stderr
        assert "paused now: mm" in refused.stderr
        resumed = cli(
            "resume",
            "mm",
            "--reason",
            "fixed the webhook",
            "--by",
            "ana",
            env={"DATABASE_URL": clean_bus},
        )
        assert resumed.returncode == 0 and "resumed by ana" in resumed.stdout, resumed.stderr
        time.sleep(1.1)  # past the router's once-a-second look at the destination's state
        make_due(database)
        router.run_once()
    assert state(database, first)["status"] == state(database, second)["status"] == "completed"
    with database.transaction() as cursor:
        cursor.execute(
            "select action, actor, reason, detail from integration.operator_actions"
            " where action = 'resume'"
        )
        assert cursor.fetchall() == [("resume", "ana", "fixed the webhook", {"destination": "mm"})]
        cursor.execute("select state from integration.destination_state where destination = 'mm'")
        assert cursor.fetchone() == ("closed",)
    again = cli("resume", "mm", env={"DATABASE_URL": clean_bus})
    assert again.returncode == 2 and "(none is paused)" in again.stderr
