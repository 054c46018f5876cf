"""Delivery never halts: poison events, hostile peers, slow destinations, a frozen database.

Each test meets one failure as the world would bring it: a real receiver and real routers,
misbehaving servers on loopback, a real PostgreSQL (stopped or frozen where that is the point).
The numbers in the names are the items of the issue that asked for them.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import threading
import time
import uuid

import psutil
import psycopg2
import pytest
import requests

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.delivery.destinations import MattermostDestination
from ipai_bus_lib.delivery.formatters import format_event
from ipai_bus_lib.storage import outbox
from ipai_bus_lib.storage.embedded import EmbeddedPostgres
from ipai_bus_lib.storage.migrator import migrate

from . import helpers
from .helpers import (
    WEBHOOK_PATH,
    cli,
    counts,
    event_body,
    post,
    private_cluster,
    receiver_process,
    signed,
    wait_until,
)
from .sinks import HttpSink, Reply, TricklingSink
from .test_router import add_events, attempts_of, make_router, state


def insert_raw(
    url: str,
    *,
    occurred_at: str | None = None,
    payload_json: str = '{"amount": 1}',
    aggregate: str = "poison",
    event_type: str = "expense.submitted",
) -> uuid.UUID:
    """Store an event by SQL, as an older receiver or another ingress could have stored it."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select event_id from integration.insert_outbox_event(p_event_type => %s,"
            " p_aggregate_type => 'hr.expense', p_aggregate_id => %s, p_payload => %s::jsonb,"
            " p_idempotency_key => %s, p_occurred_at => %s::timestamptz)",
            (event_type, aggregate, payload_json, str(uuid.uuid4()), occurred_at),
        )
        event_id = cursor.fetchone()[0]
    conn.close()
    return uuid.UUID(str(event_id))


def run_in_thread(router) -> threading.Thread:
    thread = threading.Thread(target=router.run, daemon=True)
    thread.start()
    return thread


# --- 1. poison at claim -----------------------------------------------------------------------


def test_1_poison_events_are_parked_and_everything_queued_after_them_flows(clean_bus, database):
    """Stored data Python cannot represent neither stops the router nor hides the event."""
    early = insert_raw(clean_bus, occurred_at="0001-01-01T00:00:00+14:00", aggregate="7")
    late = insert_raw(clean_bus, occurred_at="9999-12-31T23:59:59-15:59", aggregate="8")
    # Nested deeper than Python's JSON reader goes (PostgreSQL's jsonb takes it). A 5000-digit
    # number served here once; the bus now reads such numbers exactly (core.exact_json).
    nested = "[" * 3000 + "]" * 3000
    unreadable = insert_raw(clean_bus, payload_json='{"amount": %s}' % nested, aggregate="7")
    behind = add_events(database, 20)
    with HttpSink() as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        thread = run_in_thread(router)
        try:
            wait_until(lambda: sink.count() >= 22, what="every readable event to be delivered")
            wait_until(
                lambda: state(database, unreadable)["status"] == "dead",
                what="the unreadable event to be parked",
            )
            assert thread.is_alive(), "the router must keep running"
        finally:
            router.stop()
            thread.join(10)
    assert all(state(database, event_id)["status"] == "completed" for event_id in [early, late, *behind])
    parked = state(database, unreadable)
    assert "payload cannot be read" in parked["last_error"]
    assert "ipai-bus retry" in parked["last_error"], "the reason says what to do"
    for event_id in (early, late, unreadable):
        shown = cli("events", "show", str(event_id), env={"DATABASE_URL": clean_bus})
        assert shown.returncode == 0 and str(event_id) in shown.stdout, shown.stderr


def test_1_such_dates_are_refused_at_the_door(clean_bus, tmp_path):
    with receiver_process(clean_bus, tmp_path) as receiver:
        for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-15:59", "9999-12-31T23:00:00Z"):
            body = event_body("1", occurred_at=moment)
            answer = post(receiver.base_url, body, signed(body, key=moment))
            assert answer.status_code == 400 and "occurred_at" in answer.json()["error"], moment
    assert counts(clean_bus) == (0, 0)


# --- 2. an enormous Retry-After -----------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["9" * 40, "Fri, 31 Dec 9999 23:59:59 GMT", "-5", "soon"])
def test_2_any_retry_after_is_bounded_and_settled(database, retry_after):
    with HttpSink(lambda request: Reply(429, headers={"Retry-After": retry_after})) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        [event_id] = add_events(database)
        assert router.run_once() == 1
    now = state(database, event_id)
    assert now["status"] == "failed", "settled at once, not left processing for the lease"
    assert float(now["due_in"]) <= 3600 + 5, "a destination cannot push a retry past an hour"


# --- 3. the breaker's trial -----------------------------------------------------------------------


@pytest.mark.parametrize("trial_answer", [429, 400])
def test_3_breaker_trial_meeting_429_or_400_still_ends_the_pause(database, trial_answer):
    answers = iter([500, 500, trial_answer])

    def respond(request):
        status = next(answers, 200)
        return Reply(status, headers={"Retry-After": "1"} if status == 429 else {})

    with HttpSink(respond) as sink:
        router = make_router(
            database,
            {"mm": MattermostDestination("mm", sink.url)},
            breaker_threshold=2,
            breaker_cooldown_seconds=0.5,
            batch_size=1,
            retry_delays=(0,),
        )
        ids = add_events(database, 6)
        thread = run_in_thread(router)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                done = [state(database, i)["status"] for i in ids]
                if all(s in ("completed", "dead") for s in done):
                    break
                time.sleep(0.2)
        finally:
            router.stop()
            thread.join(10)
    statuses = [state(database, i)["status"] for i in ids]
    assert statuses.count("completed") >= 5, f"deliveries resumed after the trial: {statuses}"
    with database.transaction() as cursor:
        cursor.execute("select state from integration.destination_state where destination = 'mm'")
        assert cursor.fetchone()[0] == "closed"
        cursor.execute("select count(*) from integration.delivery_attempts where outcome = 'deferred'")
        assert cursor.fetchone()[0] < 30, "waiting events are not re-deferred in a tight loop"


# --- 4. floods and slow clients: see test_receiver_flood.py ---------------------------------------

# --- 5. a total deadline per delivery, and leases that hold under it -------------------------------


def test_5_a_trickling_destination_cannot_hold_a_delivery_past_its_deadline(database):
    with TricklingSink(interval=0.2) as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url, timeout=1.0)})
        [event_id] = add_events(database)
        started = time.monotonic()
        router.run_once()
        elapsed = time.monotonic() - started
    assert elapsed < 3, f"held {elapsed:.1f} s with a 1 s budget"
    now = state(database, event_id)
    assert now["status"] == "failed" and "no complete answer within 1 s" in now["last_error"]
    assert attempts_of(database, event_id)[0][1] == "failed", "not recorded as delivered"


def test_5_a_lease_never_runs_out_under_a_delivery_in_progress(database):
    with HttpSink(lambda request: Reply(200, delay=4.0)) as sink:
        slow = make_router(
            database,
            {"mm": MattermostDestination("mm", sink.url, timeout=10)},
            lease_seconds=1,
            worker="slow",
        )
        other = make_router(database, {"mm": MattermostDestination("mm", sink.url)}, worker="other")
        [event_id] = add_events(database)
        thread = run_in_thread(slow)
        try:
            wait_until(
                lambda: state(database, event_id)["status"] == "processing",
                what="the slow delivery to start",
            )
            time.sleep(2.5)  # two and a half leases
            assert other.run_once() == 0, "another router must not take a lease in use"
            wait_until(
                lambda: state(database, event_id)["status"] == "completed",
                timeout=15,
                what="the slow delivery to finish",
            )
        finally:
            slow.stop()
            thread.join(10)
    assert sink.count() == 1, "delivered exactly once"


# --- 6. values PostgreSQL cannot store are 400, not 500 -------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"aggregate_id": int("9" * 300)},
        {"aggregate_id": -1},
        {"occurred_at": "2026-01-22T07:26:26+24:00"},
        {"occurred_at": "2026-01-22T07:26:26-23:59"},
        {"occurred_at": "2026-01-22T07:26:26+99:99"},
        {"occurred_at": "2026-01-22T07:26:26+14:01"},
    ],
)
def test_6_unstorable_values_are_refused_with_400(clean_bus, tmp_path, changes, receiver_for_bus):
    body = event_body("6", **changes)
    answer = post(receiver_for_bus.base_url, body, signed(body, key=f"k6-{uuid.uuid4()}"))
    assert answer.status_code == 400, answer.text
    field = next(iter(changes))
    assert field in answer.json()["error"]
    assert counts(clean_bus) == (0, 0)


@pytest.fixture(scope="module")
def receiver_for_bus(bus_url, tmp_path_factory):
    with receiver_process(bus_url, tmp_path_factory.mktemp("receiver")) as running:
        yield running


# --- 7. identical resends racing ------------------------------------------------------------------


def test_7_byte_identical_resends_racing_are_duplicates_never_replays(clean_bus, receiver_for_bus):
    replays = 0
    for round_number in range(30):
        body = event_body(f"race-{round_number}")
        headers = signed(body, key=f"race-{round_number}")
        barrier = threading.Barrier(20)
        answers: list[requests.Response] = []

        def send(barrier=barrier, answers=answers, body=body, headers=headers):
            barrier.wait()
            answers.append(post(receiver_for_bus.base_url, body, headers))

        threads = [threading.Thread(target=send) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(answer.status_code for answer in answers)
        replays += statuses.count(401)
        assert statuses == [200] * 20, [a.text for a in answers if a.status_code != 200]
        assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert replays == 0
    assert counts(clean_bus) == (30, 30)


# --- 8. the database log is private and holds no payloads ----------------------------------------


def test_8_embedded_log_is_private_and_keeps_no_statements(tmp_path):
    cluster = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off"})
    url = cluster.ensure_running()
    try:
        migrate(url)
        marker = f"PAYLOAD-MARKER-{uuid.uuid4().hex}"
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cursor:
            for key in ("first", "second"):  # the same signed message under two keys: refused
                try:
                    cursor.execute(
                        "select * from integration.insert_outbox_event('expense.paid', 'x', '1',"
                        " %s::jsonb, %s, p_signature_digest => 'same-digest')",
                        (json.dumps({"secret_note": marker}), key),
                    )
                except psycopg2.Error as exc:
                    assert exc.pgcode == "IB001"
        conn.close()
    finally:
        cluster.stop()
    log = cluster.log_file
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(cluster.home.stat().st_mode) == 0o700
    text = log.read_text()
    assert "replayed signature" in text, "the error itself is logged"
    assert marker not in text, "the statement (and its payload) is not"


# --- 9. a replaced secret file is private whatever was there --------------------------------------


def test_9_secret_new_force_over_a_world_readable_file_makes_it_private(tmp_path):
    target = tmp_path / "secret"
    target.write_text("old secret that was world readable\n")
    target.chmod(0o644)
    result = cli("secret", "new", "-o", str(target), "--force", env={})
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600, "the printed promise holds"
    assert "world readable" not in target.read_text()


# --- 10. a tiny payload cannot make a huge message ------------------------------------------------


def test_10_huge_numbers_and_texts_make_bounded_messages(database):
    started = time.monotonic()
    message = format_event(
        "expense.submitted",
        {"amount": "1e100000000", "currency": "PHP", "employee_name": "x" * 1_000_000},
    )
    assert time.monotonic() - started < 0.5
    assert len(message.markdown) < 2000 and "1e100000000" in message.markdown
    with HttpSink() as sink:
        router = make_router(database, {"mm": MattermostDestination("mm", sink.url)})
        with database.transaction() as cursor:
            event_id = helpers.insert_event(
                cursor,
                Envelope("expense.submitted", "hr.expense", "10", {"amount": "1e100000000"}),
                idempotency_key="huge",
            ).event_id
        router.run_once()
        assert state(database, event_id)["status"] == "completed"
        assert len(sink.received[0].body) < 2000


# --- 11. /metrics is cheap and can be protected ---------------------------------------------------


def test_11_metrics_read_the_outbox_at_most_every_few_seconds(clean_bus, tmp_path, database):
    add_events(database, 3)
    with receiver_process(clean_bus, tmp_path, workers=1) as receiver:
        first = requests.get(receiver.base_url + "/metrics", timeout=5).text
        add_events(database, 5)
        later = [requests.get(receiver.base_url + "/metrics", timeout=5).text for _ in range(30)]
    pending = 'ipai_outbox_events{status="pending"}'
    assert f"{pending} 3.0" in first
    assert all(f"{pending} 3.0" in text for text in later), "scrapes share one recent reading"


def test_11_metrics_token_is_required_when_set(clean_bus, tmp_path, monkeypatch):
    token = "metrics-token-for-tests"
    monkeypatch.setenv("IPAI_METRICS_TOKEN", token)
    with receiver_process(clean_bus, tmp_path) as receiver:
        url = receiver.base_url + "/metrics"
        refused = requests.get(url, timeout=5)
        wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
        allowed = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert refused.status_code == 401 and wrong.status_code == 401
    assert refused.json()["ok"] is False and token not in refused.text
    assert allowed.status_code == 200 and "ipai_outbox_events" in allowed.text


# --- 12. a frozen database answers 503 within 2 s -------------------------------------------------


def _cluster_processes(cluster: EmbeddedPostgres) -> list[psutil.Process]:
    pid = int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def test_12_frozen_database_gives_503_within_two_seconds_then_recovers(tmp_path):
    with private_cluster(tmp_path) as (cluster, url):
        with receiver_process(url, tmp_path) as receiver:
            body = event_body("12")
            assert post(receiver.base_url, body, signed(body, key="k-12")).status_code == 200
            frozen = _cluster_processes(cluster)
            for process in frozen:
                process.send_signal(signal.SIGSTOP)
            try:
                timings, refused = [], []
                for number in range(4):
                    body = event_body(f"12-{number}")
                    headers = signed(body, key=f"k-12-{number}")
                    started = time.monotonic()
                    answer = post(receiver.base_url, body, headers)
                    timings.append(time.monotonic() - started)
                    assert answer.status_code == 503, answer.text
                    refused.append((body, headers))
                started = time.monotonic()
                health = requests.get(receiver.base_url + "/readyz", timeout=10)
                timings.append(time.monotonic() - started)
                assert health.status_code == 503
                assert max(timings) < 2.0, f"answers took {timings}"
            finally:
                for process in frozen:
                    process.send_signal(signal.SIGCONT)
            body = event_body("12-after")
            wait_until(
                lambda: post(receiver.base_url, body, signed(body, key="k-12-after")).status_code == 200,
                timeout=10,
                interval=0.2,
                what="recovery",
            )
            # The senders retry what got 503. A statement the frozen server had already
            # received may have committed when it woke: the retry then answers duplicate.
            for body, headers in refused:
                assert post(receiver.base_url, body, headers).status_code == 200
            assert counts(url) == (6, 6), "every event stored once"


# --- minor: repeated headers, the server's own answers -------------------------------------------


def test_two_idempotency_key_headers_are_refused(clean_bus, receiver_for_bus):
    body = event_body("dup-header")
    headers = signed(body, key="k1")
    port = int(receiver_for_bus.base_url.rsplit(":", 1)[1])
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"x-ipai-timestamp: {headers['x-ipai-timestamp']}\r\n"
        f"x-ipai-signature: {headers['x-ipai-signature']}\r\n"
        "x-idempotency-key: k1\r\nx-idempotency-key: k2\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    status, answer = _raw_exchange(port, head.encode() + body)
    assert status == 400 and answer["error"] == "x-idempotency-key header must be sent once"
    assert counts(clean_bus) == (0, 0)


@pytest.mark.parametrize(
    "request_bytes, status, error",
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            431,
            "request head too large",
        ),
    ],
)
def test_the_servers_own_refusals_are_json(receiver_for_bus, request_bytes, status, error):
    port = int(receiver_for_bus.base_url.rsplit(":", 1)[1])
    assert _raw_exchange(port, request_bytes) == (status, {"ok": False, "error": error})


def _raw_exchange(port: int, data: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- the database restarting under a busy router --------------------------------------------------


def test_database_restarts_under_a_busy_router_pin_nothing(tmp_path):
    """Batches delivered while the database was away are settled or handed back, never held."""
    from ipai_bus_lib.storage.db import Database

    cluster = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off"})
    url = cluster.ensure_running()
    migrate(url)
    database = Database(url, max_size=6, deadline_seconds=5)
    try:
        ids = add_events(database, 400)
        with HttpSink(lambda request: Reply(200, delay=0.02)) as sink:
            router = make_router(
                database, {"mm": MattermostDestination("mm", sink.url)}, lease_seconds=3, batch_size=10
            )
            thread = run_in_thread(router)
            try:
                for _ in range(3):
                    wait_until(lambda: sink.count() > 0, what="deliveries")
                    time.sleep(0.5)
                    cluster.stop()
                    time.sleep(0.5)
                    cluster.ensure_running()
                checker = Database(url)
                wait_until(
                    lambda: all(state(checker, i)["status"] == "completed" for i in ids),
                    timeout=40,
                    interval=0.5,
                    what="every event to be delivered",
                )
                checker.close()
            finally:
                router.stop()
                thread.join(10)
        assert sink.count() >= len(ids), "every event reached the destination"
    finally:
        database.close()
        cluster.stop()


# --- minor: the receiver runs as a role that may only ingest ---------------------------------------


def test_receiver_runs_as_a_role_that_may_only_ingest(clean_bus, tmp_path, monkeypatch):
    from urllib.parse import urlsplit, urlunsplit

    role, password = "ipai_test_receiver", "receiver-role-password-for-tests"
    admin = psycopg2.connect(clean_bus)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("select 1 from pg_roles where rolname = %s", (role,))
        verb = "alter" if cursor.fetchone() else "create"
        cursor.execute(f"{verb} role {role} login password %s", (password,))
        cursor.execute(f"grant ipai_bus_ingest to {role}")
    admin.close()
    parts = urlsplit(clean_bus)
    role_url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    monkeypatch.setenv("IPAI_RECEIVER_DATABASE_URL", role_url)
    with receiver_process(clean_bus, tmp_path) as receiver:
        body = event_body("least")
        assert post(receiver.base_url, body, signed(body, key="least")).status_code == 200
        metrics = requests.get(receiver.base_url + "/metrics", timeout=5).text
    assert 'ipai_outbox_events{status="pending"} 1.0' in metrics
    assert counts(clean_bus) == (1, 1)
    conn = psycopg2.connect(role_url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        for statement in (
            "select * from integration.outbox",
            "select * from public.claim_outbox('w', 1, 60)",
            "delete from integration.event_log",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(statement)
    conn.close()


# --- several Odoo databases share one bus ---------------------------------------------------------


def test_the_same_record_id_from_two_sources_never_waits_for_the_other(database):
    """Record 7 of one Odoo database does not wait behind record 7 of another."""
    with database.transaction() as cursor:
        for source in ("odoo-manila", "odoo-cebu"):
            helpers.insert_event(
                cursor,
                Envelope("expense.submitted", "hr.expense", "7", {"amount": 1}, source=source),
                idempotency_key="expense.submitted:7:1",
            )
    with database.transaction() as cursor:
        [first] = outbox.claim(cursor, worker="w1", limit=1)
    with database.transaction() as cursor:
        second = outbox.claim(cursor, worker="w2", limit=5)
    assert [event.source for event in second] == ["odoo-cebu"], "not blocked by odoo-manila's 7"
    assert first.source == "odoo-manila"


# --- IPAI_MAX_ATTEMPTS reaches what the receiver stores ---------------------------------------------


def test_max_attempts_setting_is_what_the_receiver_stores(clean_bus, tmp_path, monkeypatch):
    monkeypatch.setenv("IPAI_MAX_ATTEMPTS", "7")
    with receiver_process(clean_bus, tmp_path) as receiver:
        body = event_body("attempts")
        assert post(receiver.base_url, body, signed(body, key="attempts")).status_code == 200
    conn = psycopg2.connect(clean_bus)
    with conn.cursor() as cursor:
        cursor.execute("select max_attempts from integration.outbox")
        assert cursor.fetchall() == [(7,)], "the documented setting takes effect"
    conn.close()
