"""A property over the envelope's whole value space, end to end: whatever a signed sender puts
in it (dates, zone offsets, numbers, strings, nesting), the receiver answers 200 or 400 and
nothing else, and a router then handles every stored event and keeps running."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipai_bus_lib.core.catalog import CATALOG
from ipai_bus_lib.delivery.destinations import MattermostDestination

from .helpers import post, receiver_process, signed, wait_until
from .sinks import HttpSink
from .test_router import make_router

pytestmark = pytest.mark.slow


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


datetimes = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, frac, zone: f"{y:04d}-{mo}-{d}T{h}:{mi}:{s}{frac}{zone}",
        st.integers(0, 9999),
        _two(0, 13),
        _two(0, 32),
        _two(0, 25),
        _two(0, 60),
        _two(0, 61),
        st.sampled_from(["", ".5", ".123456789"]),
        st.one_of(
            st.just("Z"),
            st.builds(
                lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), _two(0, 99), _two(0, 99)
            ),
        ),
    ),
    st.text(max_size=40),
    st.integers(),
    st.none(),
)
numbers = st.one_of(
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e100000000", "-1e-100000000", "NaN", "Infinity", "9" * 4000]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=300)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
payloads = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "amount",
                "currency",
                "employee_name",
                "date",
                "expense_id",
                "task_id",
                "days_overdue",
                "reserved_from",
            ]
        ),
        json_values,
        max_size=8,
    ),
    st.dictionaries(st.text(max_size=30), json_values, max_size=6),
    json_values,
)
envelopes = st.fixed_dictionaries(
    {
        "event_type": st.one_of(st.sampled_from(sorted(CATALOG)), st.text(max_size=30)),
        "aggregate_type": st.one_of(st.just("hr.expense"), st.text(max_size=300)),
        "aggregate_id": st.one_of(
            st.integers(-(10**300), 10**300), st.text(max_size=300), st.floats(allow_nan=False)
        ),
        "payload": payloads,
    },
    optional={"occurred_at": datetimes, "source": st.one_of(st.just("odoo"), st.text(max_size=70))},
)


def test_any_signed_envelope_is_200_or_400_and_the_router_survives_what_was_stored(
    clean_bus, tmp_path, database
):
    answered: dict[int, int] = {}
    counter = iter(range(10**6))
    with receiver_process(clean_bus, tmp_path, workers=1) as receiver:

        @settings(
            max_examples=250,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(document=envelopes)
        def sent_signed(document):
            body = json.dumps(document).encode()  # ASCII escapes keep lone surrogates sendable
            answer = post(receiver.base_url, body, signed(body, key=f"prop-{next(counter)}"))
            assert answer.status_code in (200, 400), (answer.status_code, answer.text, body[:300])
            assert answer.json()["ok"] is (answer.status_code == 200)
            answered[answer.status_code] = answered.get(answer.status_code, 0) + 1

        sent_signed()
    assert answered.get(200) and answered.get(400), f"both outcomes were exercised: {answered}"

    with HttpSink() as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)}, batch_size=50)
        thread = threading.Thread(target=router.run, daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: _unsettled(database) == 0,
                timeout=60,
                what="every stored event to be delivered or parked",
            )
            time.sleep(0.3)
            assert thread.is_alive(), "the router keeps running"
        finally:
            router.stop()
            thread.join(10)
    with database.transaction() as cursor:
        cursor.execute(
            "select status, count(*), bool_and(status <> 'dead' or last_error <> '')"
            " from integration.event_state group by status"
        )
        outcome = {status: (count, reasoned) for status, count, reasoned in cursor.fetchall()}
    assert set(outcome) <= {"completed", "dead"}, outcome
    assert all(reasoned for _, reasoned in outcome.values()), "every dead event says why"
    assert outcome["completed"][0] == sink.count()


def _unsettled(database) -> int:
    with database.transaction() as cursor:
        cursor.execute(
            "select count(*) from integration.outbox where status in ('pending', 'processing', 'failed')"
        )
        return int(cursor.fetchone()[0])
