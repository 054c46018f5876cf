"""Property-based fuzz of the receiver over HTTP: never a 5xx, never a row for a refused request."""

from __future__ import annotations

import json

import psycopg2
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipai_bus_lib.core import signing

from .helpers import PRIMARY_SECRET, WEBHOOK_PATH, receiver_process

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "event_type": st.sampled_from(["expense.paid", "test", "Bad Type", "", "a.b.c"])
        | st.text(max_size=12),
        "aggregate_type": st.text(max_size=12) | st.integers(),
        "aggregate_id": st.text(max_size=12) | st.integers() | st.floats() | st.booleans(),
        "payload": json_values,
        "occurred_at": st.sampled_from(["2026-01-22T07:26:26Z", "2026-13-01T00:00:00Z", "soon"])
        | st.text(max_size=25),
        "source": st.sampled_from(["odoo", "n8n", "bad source"]) | st.text(max_size=8),
    },
)
bodies = (
    st.binary(max_size=300)
    | envelope_like.map(lambda document: json.dumps(document).encode())
    | json_values.map(lambda value: json.dumps(value).encode())
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70).map(
    str.strip
)


@st.composite
def requests_to_send(draw):
    body = draw(bodies)
    now = signing.now_ms()
    timestamp = draw(st.sampled_from([str(now), str(now - 400_000), ""]) | header_text)
    how_signed = draw(st.sampled_from(["valid", "garbage", "missing"]))
    headers = {
        "Content-Type": draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
        )
    }
    if timestamp:
        headers["x-ipai-timestamp"] = timestamp
    if how_signed == "valid":
        headers["x-ipai-signature"] = signing.sign(PRIMARY_SECRET, body, timestamp_ms=timestamp)
    elif how_signed == "garbage":
        headers["x-ipai-signature"] = draw(header_text)
    key = draw(st.none() | header_text)
    if key is not None:
        headers["x-idempotency-key"] = key
    return body, headers


@pytest.fixture(scope="module")
def fuzz_receiver(bus_url, tmp_path_factory):
    with receiver_process(bus_url, tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def outbox_count(conn) -> int:
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select (select count(*) from integration.outbox),"
            " (select count(*) from integration.event_log)"
        )
        return cursor.fetchone()


def test_fuzzed_requests_never_fail_the_server_or_store_refusals(fuzz_receiver, clean_bus):
    conn = psycopg2.connect(clean_bus)
    session = requests.Session()
    statuses = []

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests_to_send())
    def check(request):
        body, headers = request
        before = outbox_count(conn)
        response = session.post(
            fuzz_receiver.base_url + WEBHOOK_PATH, data=body, headers=headers, timeout=15
        )
        statuses.append(response.status_code)
        assert response.status_code in (200, 400, 401, 413, 415), (response.status_code, response.text)
        assert response.json()["ok"] is (response.status_code == 200)
        if response.status_code != 200:
            assert outbox_count(conn) == before, "a refused request stored something"

    try:
        check()
    finally:
        session.close()
        conn.close()
    assert {400, 401} <= set(statuses), f"the fuzz should reach the deeper checks: {set(statuses)}"
