"""The integration schema's SQL functions on a real PostgreSQL: semantics, races, access rules."""

from __future__ import annotations

import select
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.errors import InvalidArgument, ReplayedSignature
from ipai_bus_lib.storage import outbox
from ipai_bus_lib.storage.db import Database

from . import helpers


def envelope(aggregate_id: str = "1", event_type: str = "expense.submitted") -> Envelope:
    return Envelope(event_type, "hr.expense", aggregate_id, {"amount": 1})


def insert(conn, key: str, **kwargs) -> outbox.InsertResult:
    """One event of its own aggregate (events of one aggregate are claimed one at a time)."""
    with conn, conn.cursor() as cursor:
        return helpers.insert_event(cursor, envelope(aggregate_id=key), idempotency_key=key, **kwargs)


def row(conn, event_id) -> dict:
    with conn, conn.cursor() as cursor:
        cursor.execute("select * from integration.outbox where id = %s", (event_id,))
        names = [column.name for column in cursor.description]
        return dict(zip(names, cursor.fetchone()))


def status_of(conn, event_id) -> str:
    """The event's status as every reader sees it (completed once it left the outbox)."""
    with conn, conn.cursor() as cursor:
        cursor.execute("select status from integration.event_state where id = %s", (event_id,))
        return cursor.fetchone()[0]


def count(conn, table: str = "integration.outbox") -> int:
    with conn, conn.cursor() as cursor:
        cursor.execute(f"select count(*) from {table}")
        return cursor.fetchone()[0]


def claim(conn, worker: str = "w1", limit: int = 25, lease: int = 60):
    with conn, conn.cursor() as cursor:
        return outbox.claim(cursor, worker=worker, limit=limit, lease_seconds=lease)


def seconds_until_available(conn, event_id) -> float:
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select extract(epoch from available_at - now()) from integration.outbox where id = %s",
            (event_id,),
        )
        return float(cursor.fetchone()[0])


# --- insert_outbox_event --------------------------------------------------------------------


def test_insert_stores_a_pending_event(conn):
    result = insert(conn, "k1")
    stored = row(conn, result.event_id)
    assert result.duplicate is False
    assert (stored["status"], stored["attempts"], stored["max_attempts"]) == ("pending", 0, 4)
    assert stored["payload"] == {"amount": 1} and stored["source"] == "odoo"


def test_insert_of_a_known_key_is_a_duplicate_and_writes_nothing(conn):
    first = insert(conn, "k1")
    second = insert(conn, "k1")
    assert second == outbox.InsertResult(first.event_id, True)
    assert count(conn) == 1


def test_same_key_from_another_source_is_a_new_event(conn):
    first = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        other = helpers.insert_event(
            cursor, Envelope("test", "x", "1", {}, source="n8n"), idempotency_key="k1"
        )
    assert other.event_id != first.event_id and not other.duplicate


def test_insert_notifies_routers(conn, clean_bus):
    listener = psycopg2.connect(clean_bus)
    listener.autocommit = True
    try:
        listener.cursor().execute("listen integration_outbox")
        result = insert(conn, "k1")
        ready, _, _ = select.select([listener], [], [], 5)
        assert ready, "no NOTIFY arrived within 5 s"
        listener.poll()
        assert [note.payload for note in listener.notifies] == [str(result.event_id)]
    finally:
        listener.close()


def test_signature_already_accepted_under_another_key_is_a_replay(conn):
    insert(conn, "k1", signature_digest="f" * 64)
    with pytest.raises(psycopg2.Error) as caught:
        insert(conn, "k2", signature_digest="f" * 64)
    assert caught.value.pgcode == "IB001"
    assert count(conn) == 1


def test_byte_identical_resend_is_a_duplicate_not_a_replay(conn):
    first = insert(conn, "k1", signature_digest="e" * 64)
    assert insert(conn, "k1", signature_digest="e" * 64) == outbox.InsertResult(first.event_id, True)


def test_replay_is_translated_by_the_library(database):
    with database.transaction() as cursor:
        helpers.insert_event(cursor, envelope(), idempotency_key="k1", signature_digest="a" * 64)
    with pytest.raises(ReplayedSignature), database.transaction() as cursor:
        helpers.insert_event(cursor, envelope(), idempotency_key="k2", signature_digest="a" * 64)


def test_twenty_threads_inserting_one_key_store_one_event(database):
    barrier = threading.Barrier(20)

    def race(_):
        barrier.wait()
        with database.transaction() as cursor:
            return helpers.insert_event(cursor, envelope(), idempotency_key="same")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(race, range(20)))
    assert sum(not result.duplicate for result in results) == 1
    assert sum(result.duplicate for result in results) == 19
    assert len({result.event_id for result in results}) == 1
    with database.transaction() as cursor:
        cursor.execute("select count(*) from integration.outbox")
        assert cursor.fetchone()[0] == 1


# --- insert_event_log and the append-only guard --------------------------------------------


def test_keys_live_beside_the_outbox_and_a_purge_forgets_them_with_their_events(conn):
    """The uniqueness rules live in integration.event_key (the router's updates of the outbox
    need not maintain them); a purged event's key goes with it, so a resend is stored anew."""
    first = insert(conn, "kept-key", signature_digest="digest-1")
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select source, idempotency_key, signature_digest, event_id from integration.event_key"
        )
        assert cursor.fetchall() == [("odoo", "kept-key", "digest-1", first.event_id)]
        helpers.complete_by_hand(cursor, first.event_id, days_ago=2)
    with conn, conn.cursor() as cursor:
        cursor.execute("select integration.purge_completed(interval '1 day', 'tester')")
        assert cursor.fetchone()[0] == 1
    assert count(conn, "integration.event_key") == 0
    again = insert(conn, "kept-key", signature_digest="digest-1")
    assert not again.duplicate and again.event_id != first.event_id


def test_event_log_copies_the_event_once(conn):
    result = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        first = helpers.insert_event_log(cursor, result.event_id)
        again = helpers.insert_event_log(cursor, result.event_id)
        cursor.execute("select event_type, idempotency_key, payload from integration.event_log")
        logged = cursor.fetchall()
    assert first == again
    assert logged == [("expense.submitted", "k1", {"amount": 1})]


@pytest.mark.parametrize(
    "statement",
    [
        "update integration.event_log set payload = '{}'",
        "delete from integration.event_log",
        "truncate integration.event_log",
    ],
)
def test_event_log_refuses_change(conn, statement):
    result = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        helpers.insert_event_log(cursor, result.event_id)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
    assert count(conn, "integration.event_log") == 1


# --- claim / lease ----------------------------------------------------------------------------


def test_claim_leases_due_events_and_counts_an_attempt(conn):
    result = insert(conn, "k1")
    claimed = claim(conn, worker="w1", lease=60)
    assert [event.id for event in claimed] == [result.event_id]
    stored = row(conn, result.event_id)
    assert (stored["status"], stored["attempts"], stored["locked_by"]) == ("processing", 1, "w1")
    assert claim(conn, worker="w2") == [], "a leased event must not be handed out twice"


def test_claim_skips_events_not_yet_due(conn):
    result = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.outbox set available_at = now() + interval '1 hour'")
    assert claim(conn) == []
    assert row(conn, result.event_id)["status"] == "pending"


def test_two_connections_claiming_at_once_never_share_a_row(database):
    with database.transaction() as cursor:
        for number in range(400):
            helpers.insert_event(cursor, envelope(str(number)), idempotency_key=f"k{number}")
    barrier = threading.Barrier(2)

    def worker(name):
        got = []
        barrier.wait()
        while True:
            with database.transaction() as cursor:
                batch = outbox.claim(cursor, worker=name, limit=7)
            if not batch:
                return got
            got += [event.id for event in batch]

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(worker, ["a", "b"])
    assert not set(first) & set(second), "a row was claimed by both connections"
    assert len(first) + len(second) == 400
    assert first and second, "both connections should have had work"


def test_expired_lease_is_taken_back_and_counts_an_attempt(conn):
    result = insert(conn, "k1")
    claim(conn, worker="crashed")
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.outbox set lease_expires_at = now() - interval '1 s'")
    reclaimed = claim(conn, worker="w2")
    assert [event.id for event in reclaimed] == [result.event_id]
    stored = row(conn, result.event_id)
    assert (stored["attempts"], stored["locked_by"]) == (2, "w2")


def test_lease_expiring_on_the_last_attempt_makes_the_event_dead(conn):
    result = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "update integration.outbox set status = 'processing', attempts = 4,"
            " locked_by = 'crashed', lease_expires_at = now() - interval '1 s'"
        )
    assert claim(conn) == []
    stored = row(conn, result.event_id)
    assert stored["status"] == "dead"
    assert "lease of worker crashed expired on attempt 4 of 4" in stored["last_error"]


def test_stale_worker_cannot_ack_or_fail_a_row_taken_over(conn):
    result = insert(conn, "k1")
    claim(conn, worker="slow")
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.outbox set lease_expires_at = now() - interval '1 s'")
    claim(conn, worker="fresh")
    with conn, conn.cursor() as cursor:
        assert outbox.ack(cursor, [result.event_id], worker="slow") == 0
        assert outbox.fail(cursor, result.event_id, worker="slow", error="x") is None
    assert row(conn, result.event_id)["locked_by"] == "fresh"


# --- ack / fail / release -------------------------------------------------------------------


def test_ack_completes_many_events_in_one_call(conn):
    ids = [insert(conn, f"k{number}").event_id for number in range(5)]
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert outbox.ack(cursor, ids, worker="w1") == 5
    assert count(conn) == 0, "a completed event leaves the outbox"
    assert {status_of(conn, event_id) for event_id in ids} == {"completed"}


def test_a_delivered_event_sent_again_is_still_a_duplicate_and_its_signature_a_replay(conn):
    """The outbox row goes at the acknowledgement; its key and signature stay in event_key."""
    first = insert(conn, "k1", signature_digest="e" * 64)
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert outbox.ack(cursor, [first.event_id], worker="w1") == 1
        assert outbox.ack(cursor, [first.event_id], worker="w1") == 0, "nothing left to complete"
    assert insert(conn, "k1", signature_digest="e" * 64) == outbox.InsertResult(first.event_id, True)
    with pytest.raises(psycopg2.Error) as caught:
        insert(conn, "k2", signature_digest="e" * 64)
    assert caught.value.pgcode == "IB001"
    assert count(conn) == 0 and count(conn, "integration.event_log") == 1
    assert status_of(conn, first.event_id) == "completed"


def test_fail_follows_the_back_off_schedule_then_dead(conn):
    result = insert(conn, "k1")
    for expected_delay in (30, 90, 300):
        claimed = claim(conn)
        assert [event.id for event in claimed] == [result.event_id]
        with conn, conn.cursor() as cursor:
            status = outbox.fail(cursor, result.event_id, worker="w1", error="HTTP 502")
        assert status == "failed"
        assert seconds_until_available(conn, result.event_id) == pytest.approx(expected_delay, abs=2)
        with conn, conn.cursor() as cursor:  # let the retry come due
            cursor.execute("update integration.outbox set available_at = now()")
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert outbox.fail(cursor, result.event_id, worker="w1", error="HTTP 502") == "dead"
    stored = row(conn, result.event_id)
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("dead", 4, "HTTP 502")
    assert claim(conn) == [], "a dead event is never claimed again"


def test_fail_with_custom_delays_and_max_attempts(conn):
    result = insert(conn, "k1", max_attempts=2)
    claim(conn)
    with conn, conn.cursor() as cursor:
        outbox.fail(cursor, result.event_id, worker="w1", error="e", retry_delays=[7, 11])
    assert seconds_until_available(conn, result.event_id) == pytest.approx(7, abs=2)
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.outbox set available_at = now()")
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert outbox.fail(cursor, result.event_id, worker="w1", error="e") == "dead"


def test_fail_honours_an_explicit_retry_time(conn):
    result = insert(conn, "k1")
    claim(conn)
    with conn, conn.cursor() as cursor:
        cursor.execute("select now() + interval '42 seconds'")
        retry_at = cursor.fetchone()[0]
        outbox.fail(cursor, result.event_id, worker="w1", error="429", retry_at=retry_at)
    assert seconds_until_available(conn, result.event_id) == pytest.approx(42, abs=2)


def test_fail_with_give_up_is_dead_at_once(conn):
    result = insert(conn, "k1")
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert (
            outbox.fail(cursor, result.event_id, worker="w1", error="HTTP 404", give_up=True) == "dead"
        )
    assert row(conn, result.event_id)["attempts"] == 1


def test_release_returns_events_to_pending_without_an_attempt(conn):
    ids = [insert(conn, f"k{number}").event_id for number in range(3)]
    claim(conn)
    with conn, conn.cursor() as cursor:
        assert outbox.release(cursor, ids, worker="w1") == 3
    for event_id in ids:
        stored = row(conn, event_id)
        assert (stored["status"], stored["attempts"], stored["locked_by"]) == ("pending", 0, None)


# --- bad arguments: a clear error and nothing written ----------------------------------------

BAD_CALLS = {
    "insert: upper-case type": "select integration.insert_outbox_event('Expense', 'a', '1', '{}', 'k')",
    "insert: array payload": "select integration.insert_outbox_event('test', 'a', '1', '[]', 'k')",
    "insert: null payload": "select integration.insert_outbox_event('test', 'a', '1', null, 'k')",
    "insert: empty aggregate": "select integration.insert_outbox_event('test', '', '1', '{}', 'k')",
    "insert: empty key": "select integration.insert_outbox_event('test', 'a', '1', '{}', '')",
    "insert: non-ascii key": "select integration.insert_outbox_event('test', 'a', '1', '{}', 'ké')",
    "insert: bad source": "select integration.insert_outbox_event('test', 'a', '1', '{}', 'k', 'a b')",
    "insert: zero attempts": (
        "select integration.insert_outbox_event('test', 'a', '1', '{}', 'k', 'odoo', null, null, 0)"
    ),
    "log: null id": "select integration.insert_event_log(null)",
    "log: unknown id": "select integration.insert_event_log(gen_random_uuid())",
    "claim: empty worker": "select * from integration.claim_outbox('', 10, 60)",
    "claim: zero limit": "select * from integration.claim_outbox('w', 0, 60)",
    "claim: negative lease": "select * from integration.claim_outbox('w', 10, -1)",
    "ack: null ids": "select integration.ack_outbox(null, 'w')",
    "ack: null worker": "select integration.ack_outbox(array[gen_random_uuid()], null)",
    "fail: null id": "select integration.fail_outbox(null, 'w', 'e')",
    "fail: empty error": "select integration.fail_outbox(gen_random_uuid(), 'w', '')",
    "fail: empty delays": "select integration.fail_outbox(gen_random_uuid(), 'w', 'e', '{}')",
    "fail: negative delay": "select integration.fail_outbox(gen_random_uuid(), 'w', 'e', '{30,-1}')",
    "release: null ids": "select integration.release_outbox(null, 'w')",
}


@pytest.mark.parametrize("statement", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_give_a_clear_error_and_write_nothing(conn, statement):
    existing = insert(conn, "existing")
    before = row(conn, existing.event_id)
    logged = count(conn, "integration.event_log")  # the existing event's audit copy
    with pytest.raises(psycopg2.Error) as caught, conn, conn.cursor() as cursor:
        cursor.execute(statement)
    assert caught.value.pgcode == "22023", f"want invalid_parameter_value, got {caught.value}"
    function_named = caught.value.diag.message_primary.split(":")[0]
    assert function_named in statement, "the message should start with the function's name"
    assert count(conn) == 1 and count(conn, "integration.event_log") == logged == 1
    assert row(conn, existing.event_id) == before


def test_bad_arguments_are_translated_to_invalid_argument(database):
    with pytest.raises(InvalidArgument, match="claim_outbox: limit"), database.transaction() as cursor:
        outbox.claim(cursor, worker="w", limit=0)


# --- the claim path stays an index scan -------------------------------------------------------


def test_claim_queries_use_the_partial_indexes(conn):
    """With a table of many dead rows (the ones kept for an operator) the claim path reads only
    partial indexes."""
    with conn, conn.cursor() as cursor:
        insert_raw(cursor, 20000, status="dead")
        for number in range(20):
            helpers.insert_event(cursor, envelope(f"live-{number}"), idempotency_key=f"live-{number}")
        cursor.execute("analyze integration.outbox")
        cursor.execute(
            "explain select id from integration.outbox where status in"
            " ('pending','failed') and available_at <= now() order by available_at limit 25"
        )
        due_plan = " ".join(line for (line,) in cursor.fetchall())
        cursor.execute(
            "explain select id from integration.outbox where status = 'processing'"
            " and lease_expires_at <= now() order by lease_expires_at limit 25"
        )
        lease_plan = " ".join(line for (line,) in cursor.fetchall())
    assert "Seq Scan" not in due_plan + lease_plan, (due_plan, lease_plan)
    assert "outbox_due_idx" in due_plan, due_plan
    assert "outbox_lease_idx" in lease_plan, lease_plan


GOOD_ROW = {
    "event_type": "expense.submitted",
    "source": "odoo",
    "idempotency_key": "raw-1",
    "aggregate_type": "hr.expense",
    "aggregate_id": "1",
    "payload": "{}",
}


@pytest.mark.parametrize(
    ("column", "bad_value", "constraint"),
    [
        ("event_type", "Expense Submitted", "outbox_event_type_shape"),
        ("source", "odoo prod", "outbox_source_shape"),
        ("idempotency_key", "key\nwith a line break", "outbox_idempotency_key_shape"),
        ("aggregate_type", "", "outbox_aggregate_type_shape"),
        ("aggregate_id", "9" * 256, "outbox_aggregate_id_shape"),
        ("payload", "[1, 2]", "outbox_payload_is_object"),
    ],
)
def test_shape_rules_hold_on_insert_and_on_any_update_that_sets_the_column(
    conn, column, bad_value, constraint
):
    """The shape checks live on domains (checked when a value is given, not at every claim and
    ack): a raw insert or update that bypasses insert_outbox_event still cannot store a bad value."""
    good = insert(conn, "shape-ok")
    before = row(conn, good.event_id)
    values = {**GOOD_ROW, column: bad_value}
    with pytest.raises(psycopg2.errors.CheckViolation, match=constraint), conn, conn.cursor() as cursor:
        cursor.execute(
            "insert into integration.outbox (event_type, source, idempotency_key, aggregate_type,"
            " aggregate_id, payload) values (%(event_type)s, %(source)s, %(idempotency_key)s,"
            " %(aggregate_type)s, %(aggregate_id)s, %(payload)s)",
            values,
        )
    with pytest.raises(psycopg2.errors.CheckViolation, match=constraint), conn, conn.cursor() as cursor:
        cursor.execute(
            f"update integration.outbox set {column} = %s where id = %s", (bad_value, good.event_id)
        )
    assert count(conn) == 1
    assert row(conn, good.event_id) == before


def claim_plans(conn, cursor) -> str:
    """The plans of one claim of up to 1,000 events, as auto_explain reports them."""
    cursor.execute("select rolsuper from pg_roles where rolname = current_user")
    if not cursor.fetchone()[0]:
        pytest.skip("claim plan tests skipped: LOAD 'auto_explain' needs a superuser DATABASE_URL")
    cursor.execute("load 'auto_explain'")
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_level", "notice"),
        ("client_min_messages", "log"),
    ):
        cursor.execute(f"set local {setting} = {value}")
    del conn.notices[:]
    outbox.claim(cursor, worker="w1", limit=1000)
    return " ".join(conn.notices)


def insert_raw(cursor, count: int, status: str = "pending") -> None:
    cursor.execute(
        "insert into integration.outbox (event_type, aggregate_type, aggregate_id, payload,"
        " idempotency_key, status) select 'test', 'a', g::text, '{}',"
        " %(status)s || '-' || g, %(status)s from generate_series(1, %(count)s) g",
        {"status": status, "count": count},
    )


def test_claim_joins_its_picks_back_by_primary_key_not_a_scan_of_the_outbox(conn):
    """A hash join would read the whole outbox at every claim (6 ms at 30,000 rows, growing)."""
    with conn, conn.cursor() as cursor:
        insert_raw(cursor, 5000)
        cursor.execute("analyze integration.outbox")
        plans = claim_plans(conn, cursor)
    update_plan = plans[plans.index("Update on outbox") :]
    assert "Hash Join" not in update_plan, update_plan
    assert "outbox_pkey" in update_plan, update_plan


def test_a_burst_after_a_quiet_spell_is_claimed_by_probing_each_record_not_scanning(conn):
    """Statistics gathered while no row was waiting (then, every row completed) once made the
    ordering check scan the whole active index for each candidate: 2 s per claim of 1,000 with
    10,000 waiting."""
    with conn, conn.cursor() as cursor:
        insert_raw(cursor, 3000, status="dead")
        cursor.execute("analyze integration.outbox")
        cursor.execute("delete from integration.outbox")  # the statistics stay as they were
        insert_raw(cursor, 3000)
        plans = claim_plans(conn, cursor)
    assert "Rows Removed by Join Filter" not in plans, plans
    assert "Index Cond: ((source = " in plans, plans


# --- row level security and the PostgREST wrappers --------------------------------------------


def as_role(conn, role: str, statement: str):
    with conn, conn.cursor() as cursor:
        cursor.execute(f"set local role {role}")
        cursor.execute(statement)
        return cursor.fetchall() if cursor.description else None


def test_authenticated_reads_nothing_and_cannot_write(conn):
    """With Supabase sign-up on, `authenticated` is every user: none may read a finance payload."""
    insert(conn, "k1")
    for table in ("outbox", "event_log", "delivery_attempts", "operator_actions", "signed_message"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(conn, "authenticated", f"select count(*) from integration.{table}")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role(conn, "authenticated", "update integration.outbox set status = 'dead'")
    for call in (
        "public.insert_outbox_event('test', 'a', '1', '{}', 'k2')",
        "public.outbox_depth()",
        "public.applied_migrations()",
    ):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(conn, "authenticated", f"select * from {call}")
    assert count(conn) == 1 and row(conn, insert(conn, "k1").event_id)["status"] == "pending"


def test_anon_sees_nothing(conn):
    insert(conn, "k1")
    for table in ("integration.outbox", "integration.event_log"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(conn, "anon", f"select * from {table}")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role(conn, "anon", "select * from public.claim_outbox('w', 1, 60)")


def test_service_role_works_through_the_public_wrappers(conn):
    as_role(
        conn,
        "service_role",
        "select * from public.insert_outbox_event('test', 'a', '1', '{\"x\": 1}', 'svc-1')",
    )
    claimed = as_role(conn, "service_role", "select id from public.claim_outbox('svc', 10, 60)")
    assert len(claimed) == 1
    event_id = claimed[0][0]
    assert as_role(conn, "service_role", f"select public.insert_event_log('{event_id}')")[0][0] > 0
    assert as_role(
        conn, "service_role", f"select public.ack_outbox(array['{event_id}']::uuid[], 'svc')"
    ) == [(1,)]
    assert status_of(conn, uuid.UUID(str(event_id))) == "completed"


PUBLIC_WRAPPERS = (
    "insert_outbox_event",
    "insert_event_log",
    "claim_outbox",
    "ack_outbox",
    "fail_outbox",
    "release_outbox",
    "extend_leases",
    "outbox_depth",
)


def test_wrappers_pin_their_search_path(conn):
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select proname, prosecdef, proconfig from pg_proc"
            " where pronamespace = 'public'::regnamespace and proname = any(%s)",
            (list(PUBLIC_WRAPPERS),),
        )
        wrappers = cursor.fetchall()
    assert sorted(name for name, _, _ in wrappers) == sorted(PUBLIC_WRAPPERS)
    for name, security_definer, config in wrappers:
        assert security_definer, f"{name} must be SECURITY DEFINER"
        assert config and any(item.startswith("search_path=") for item in config), name


def test_pool_recovers_after_its_connections_are_killed(database, conn):
    with database.transaction() as cursor:
        cursor.execute("select 1")
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = 'ipai-bus' and pid <> pg_backend_pid()"
        )
    with pytest.raises(Exception):  # noqa: B017 - the first use finds its connection dead
        with database.transaction() as cursor:
            cursor.execute("select 1")
    with database.transaction() as cursor:
        cursor.execute("select 1")
        assert cursor.fetchone() == (1,)


def test_pool_reports_an_unreachable_server_clearly():
    from ipai_bus_lib.core.errors import DatabaseUnavailable

    pool = Database("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(DatabaseUnavailable, match="database unreachable"), pool.transaction():
        pass
