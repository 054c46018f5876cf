"""W3C Trace Context from the sender to the destination, and the OpenTelemetry spans of each part,
exported by OTLP/HTTP to a real receiver on loopback (tests/otlp_sink.py).

Real processes throughout: `ipai-bus serve`, `ipai-bus route`, a sender in a Python process of
its own (the Odoo addon's dispatcher posts through the same SignedSender; the Odoo trace test is
in test_odoo_addons.py), an HTTP destination."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg2
import pytest

from ipai_bus_lib.core import tracing

from . import helpers
from .helpers import PRIMARY_SECRET, receiver_process, wait_until
from .otlp_sink import OtlpSink, tree
from .sinks import HttpSink
from .test_router_processes import ROUTES, router_process

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_TRACE_CONTEXT = [
    "",
    "garbage",
    GOOD.upper(),  # W3C: lowercase hex only
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # trace id all zeros
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # parent id all zeros
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
    GOOD + "-more",  # version 00 has exactly four fields
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a digit short
]


@pytest.mark.parametrize("value", NOT_TRACE_CONTEXT)
def test_what_is_not_a_traceparent_is_ignored_by_the_library_and_the_database(value, conn):
    assert tracing.parse_trace_context(value) is None
    with conn, conn.cursor() as cursor:
        cursor.execute("select * from integration.trace_context(%s, 'k=v')", (value,))
        assert cursor.fetchone() == (None, None), "the database keeps no more than the library"


def test_a_valid_context_is_kept_as_sent_and_a_later_version_read_as_00(conn):
    kept = tracing.parse_trace_context(f" {GOOD} ", "vendor=abc,other=1")
    assert kept == tracing.TraceContext(GOOD, "vendor=abc,other=1")
    later = tracing.parse_trace_context("01" + GOOD[2:] + "-what-01-adds")
    assert later is not None and later.traceparent == GOOD
    assert tracing.parse_trace_context(GOOD, "x" * 513) == tracing.TraceContext(GOOD)
    assert tracing.parse_trace_context(GOOD, "caf\u00e9=1") == tracing.TraceContext(GOOD)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select * from integration.trace_context(%s, 'vendor=abc') a,"
            " integration.trace_context(%s, repeat('x', 513)) b",
            (GOOD, GOOD),
        )
        assert cursor.fetchone() == (GOOD, "vendor=abc", GOOD, None)


def stored_traces(database_url: str) -> dict[str, tuple]:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cursor:
        cursor.execute("select idempotency_key, traceparent, tracestate from integration.outbox")
        rows = cursor.fetchall()
    conn.close()
    return {key: (parent, state) for key, parent, state in rows}


def test_a_bad_trace_context_costs_no_event(clean_bus, tmp_path):
    """Any traceparent, in a header or a batch element, is never a refusal: the event is
    stored, with its context when valid and without it otherwise."""
    with receiver_process(clean_bus, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        for key, value in (("good", GOOD), ("bad", "garbage"), ("upper", GOOD.upper())):
            body = helpers.event_body(key)
            headers = {**helpers.signed(body, key=key), "traceparent": value, "tracestate": "v=1"}
            answer = helpers.post(receiver.base_url, body, headers)
            assert answer.status_code == 200, answer.text
        elements = [
            helpers.batch_event("b-good", traceparent=GOOD),
            helpers.batch_event("b-bad", traceparent="00-zz", tracestate="v=1"),
            helpers.batch_event("b-number", traceparent=12),
            helpers.batch_event("b-none"),
        ]
        body = helpers.batch_body(elements)
        answer = helpers.post_batch(receiver.base_url, body, helpers.signed(body, key=None))
        assert answer.status_code == 200 and answer.json()["stored"] == 4, answer.text
    assert stored_traces(clean_bus) == {
        "good": (GOOD, "v=1"),
        "bad": (None, None),
        "upper": (None, None),
        "b-good": (GOOD, None),
        "b-bad": (None, None),
        "b-number": (None, None),
        "b-none": (None, None),
    }


@pytest.fixture()
def routes_file(tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    return routes


def stop(process: subprocess.Popen) -> None:
    process.terminate()  # SIGTERM: the router flushes its spans on the way out
    process.wait(timeout=30)


def test_without_opentelemetry_the_senders_context_reaches_the_destination(
    clean_bus, tmp_path, routes_file, monkeypatch
):
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    with HttpSink() as sink, receiver_process(clean_bus, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        router = router_process(clean_bus, routes_file, sink.url, tmp_path / "router.log")
        try:
            body = helpers.event_body("passed-on")
            headers = {**helpers.signed(body, key="passed-on"), "traceparent": GOOD, "tracestate": "v=1"}
            assert helpers.post(receiver.base_url, body, headers).status_code == 200
            wait_until(lambda: sink.count() == 1, what="the delivery")
        finally:
            stop(router)
    delivered = sink.received[0].headers
    assert (delivered["traceparent"], delivered["tracestate"]) == (GOOD, "v=1"), "passed on unchanged"


SENDER = """
import json, sys
from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.sender import SignedSender
from ipai_bus_lib.core import tracing
url, secret = sys.argv[1], sys.argv[2]
def envelope(n):
    return Envelope('asset.reserved', 'maintenance.equipment', str(n), {'booking_id': n}, source='odoo')
with SignedSender(url, secret) as sender:
    single = sender.post_event(envelope(1), 'trace-single')
    batch = sender.post_batch([(envelope(n), f'trace-batch-{n}') for n in (2, 3, 4)])
tracing.flush()
print(json.dumps([single, batch]))
"""


def test_one_trace_from_the_senders_post_to_the_destinations_answer(
    clean_bus, tmp_path, routes_file, monkeypatch
):
    with OtlpSink() as otlp, HttpSink() as sink:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        with receiver_process(clean_bus, tmp_path, secrets=PRIMARY_SECRET) as receiver:
            router = router_process(clean_bus, routes_file, sink.url, tmp_path / "router.log")
            try:
                sent = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        SENDER,
                        receiver.base_url + helpers.WEBHOOK_PATH,
                        PRIMARY_SECRET,
                    ],
                    env={**os.environ, "OTEL_SERVICE_NAME": "sender"},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert sent.returncode == 0, sent.stderr
                single, batch = json.loads(sent.stdout)
                assert single[0] == 200 and batch[1]["stored"] == 3, sent.stdout
                wait_until(lambda: sink.count() == 4, what="four deliveries")
            finally:
                stop(router)
        delivered = {
            request.json()["data"]["aggregate_id"]: request.headers for request in sink.received
        }
        trace_ids = {n: delivered[n]["traceparent"][3:35] for n in delivered}
        # The receiver's workers export on their way out, the router on SIGTERM.
        wait_until(
            lambda: all(len(otlp.trace(trace_ids[n])) >= 5 for n in ("1", "2")),
            timeout=30,
            what="the spans of all three parts",
        )
    single_trace = otlp.trace(trace_ids["1"])
    print("\nsingle event:\n" + tree(single_trace))
    check_single(single_trace, delivered["1"]["traceparent"])
    assert len({trace_ids[n] for n in ("2", "3", "4")}) == 1, "a batch's events share its trace"
    batch_trace = otlp.trace(trace_ids["2"])
    print("\nbatch of three:\n" + tree(batch_trace))
    check_batch(batch_trace, {n: delivered[n]["traceparent"] for n in ("2", "3", "4")})


def spans_named(spans, name, service, kind):
    found = [span for span in spans if (span.name, span.service, span.kind) == (name, service, kind)]
    assert found, f"no {kind} span {name!r} of {service}: {[(s.name, s.service) for s in spans]}"
    return found


def check_delivery(spans, parent, traceparent: str) -> None:
    """Under ``parent`` (a process span): the POST whose context the destination got, and settle."""
    (post,) = [
        s
        for s in spans_named(spans, "POST", "ipai-bus-router", "client")
        if s.parent_id == parent.span_id
    ]
    assert traceparent[36:52] == post.span_id, "the destination got the POST span's context"
    assert post.attributes["http.response.status_code"] == 200
    (settle,) = [
        s
        for s in spans_named(spans, "settle ipai.bus", "ipai-bus-router", "client")
        if s.parent_id == parent.span_id
    ]
    assert settle.attributes["messaging.operation.name"] == "ack"
    assert parent.start_ns <= post.start_ns <= post.end_ns <= settle.end_ns <= parent.end_ns


def check_single(spans, traceparent: str) -> None:
    (send,) = spans_named(spans, "send ipai.bus", "sender", "producer")
    assert send.parent_id == "" and send.attributes["messaging.message.id"] == "trace-single"
    assert send.attributes["messaging.system"] == "ipai_bus"
    (receive,) = spans_named(spans, "receive ipai.bus", "ipai-bus-receiver", "server")
    assert receive.parent_id == send.span_id and receive.attributes["http.response.status_code"] == 200
    (process,) = spans_named(spans, "process ipai.bus", "ipai-bus-router", "consumer")
    assert process.parent_id == send.span_id, "the router continues the sender's context"
    assert process.attributes["messaging.operation.type"] == "process"
    check_delivery(spans, process, traceparent)


def check_batch(spans, traceparents: dict[str, str]) -> None:
    (send,) = spans_named(spans, "send ipai.bus", "sender", "client")
    assert send.parent_id == "" and send.attributes["messaging.batch.message_count"] == 3
    creates = spans_named(spans, "create ipai.bus", "sender", "producer")
    assert len(creates) == 3 and {c.parent_id for c in creates} == {send.span_id}
    (receive,) = spans_named(spans, "receive ipai.bus", "ipai-bus-receiver", "server")
    assert receive.parent_id == send.span_id
    assert sorted(span_id for _, span_id in receive.links) == sorted(c.span_id for c in creates)
    processes = spans_named(spans, "process ipai.bus", "ipai-bus-router", "consumer")
    assert sorted(p.parent_id for p in processes) == sorted(c.span_id for c in creates)
    for process in processes:
        (traceparent,) = [
            value
            for value in traceparents.values()
            if any(s.span_id == value[36:52] and s.parent_id == process.span_id for s in spans)
        ]
        check_delivery(spans, process, traceparent)
