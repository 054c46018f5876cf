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
from ipai_bus_lib.ops.operations import SQL as OPERATIONS_SQL
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
        cursor.execute("select * from integration.outbox_state where id = %s", (event_id,))
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


def test_event_ids_are_time_ordered_so_they_land_at_the_right_edge_of_each_index(conn):
    """Random ids scattered every insert and every acknowledgement over the leaves of four
    indexes; ids of version 7 follow the order they were made in, by one event or a batch."""
    singles = [insert(conn, f"k{number}").event_id for number in range(5)]
    with conn, conn.cursor() as cursor:
        batch = [
            result.event_id
            for result in outbox.record_batch(
                cursor,
                [(envelope(f"b{number}"), f"b{number}") for number in range(5)],
                batch_key="ordered-ids",
                signature_digest="sha256:" + "0" * 64,
            )
        ]
    ids = singles + batch
    assert {event_id.version for event_id in ids} == {7}
    assert ids == sorted(ids), "made later, sorted later"


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
        helpers.expire_leases(cursor)
    reclaimed = claim(conn, worker="w2")
    assert [event.id for event in reclaimed] == [result.event_id]
    stored = row(conn, result.event_id)
    assert (stored["attempts"], stored["locked_by"]) == (2, "w2")


def test_lease_expiring_on_the_last_attempt_makes_the_event_dead(conn):
    result = insert(conn, "k1")
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.outbox set status = 'failed', attempts = 3")
    claim(conn, worker="crashed")
    assert row(conn, result.event_id)["attempts"] == 4, "the attempt in flight counts"
    with conn, conn.cursor() as cursor:
        helpers.expire_leases(cursor)
    assert claim(conn) == []
    stored = row(conn, result.event_id)
    assert stored["status"] == "dead"
    assert "lease of worker crashed expired on attempt 4 of 4" in stored["last_error"]


def test_stale_worker_cannot_ack_or_fail_a_row_taken_over(conn):
    result = insert(conn, "k1")
    claim(conn, worker="slow")
    with conn, conn.cursor() as cursor:
        helpers.expire_leases(cursor)
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


def leases(conn) -> list[tuple]:
    with conn, conn.cursor() as cursor:
        cursor.execute("select worker, open, cardinality(ids) from integration.outbox_lease order by id")
        return cursor.fetchall()


def test_one_claim_writes_one_lease_and_settling_its_last_event_ends_it(conn):
    ids = [insert(conn, f"k{number}").event_id for number in range(4)]
    with conn, conn.cursor() as cursor:
        cursor.execute("select updated_at from integration.outbox order by seq")
        written_before = cursor.fetchall()
    claimed = claim(conn, worker="w1")
    assert [event.id for event in claimed] == ids
    assert leases(conn) == [("w1", 4, 4)]
    with conn, conn.cursor() as cursor:
        cursor.execute("select updated_at from integration.outbox order by seq")
        assert cursor.fetchall() == written_before, "the claim leaves the outbox rows as they were"
        assert outbox.ack(cursor, ids[:2], worker="w1") == 2
        assert outbox.fail(cursor, ids[2], worker="w1", error="HTTP 502") == "failed"
    assert leases(conn) == [("w1", 1, 4)], "one event is still in flight"
    assert row(conn, ids[3])["status"] == "processing"
    with conn, conn.cursor() as cursor:
        assert outbox.release(cursor, [ids[3]], worker="w1") == 1
    assert leases(conn) == [], "nothing left in flight: the lease is gone"
    assert [status_of(conn, event_id) for event_id in ids] == ["completed"] * 2 + ["failed", "pending"]


def test_an_event_failed_or_handed_back_is_due_again_while_its_batch_is_still_in_flight(conn):
    """Its lease still names it (the rest of the batch is unsettled): it is free all the same."""
    retried, handed_back, in_flight = (insert(conn, f"k{number}").event_id for number in range(3))
    claim(conn, worker="w1")
    with conn, conn.cursor() as cursor:
        cursor.execute("select now()")
        outbox.fail(cursor, retried, worker="w1", error="HTTP 503", retry_at=cursor.fetchone()[0])
        assert outbox.release(cursor, [handed_back], worker="w1") == 1
    again = claim(conn, worker="w2")
    assert [(event.id, event.attempts) for event in again] == [(retried, 2), (handed_back, 1)]
    assert row(conn, in_flight)["locked_by"] == "w1", "the unsettled one stays with w1"
    with conn, conn.cursor() as cursor:
        assert outbox.ack(cursor, [retried], worker="w1") == 0, "w1 settled it already"
        assert outbox.fail(cursor, handed_back, worker="w1", error="late") is None
        assert outbox.ack(cursor, [retried, handed_back], worker="w2") == 2


def test_a_lease_running_out_counts_the_attempt_only_of_what_it_still_held(conn):
    failed, held = (insert(conn, f"k{number}").event_id for number in range(2))
    claim(conn, worker="crashed")
    with conn, conn.cursor() as cursor:
        outbox.fail(cursor, failed, worker="crashed", error="HTTP 502")
        helpers.expire_leases(cursor)
    assert [(event.id, event.attempts) for event in claim(conn, worker="w2")] == [(held, 2)]
    assert (row(conn, failed)["status"], row(conn, failed)["attempts"]) == ("failed", 1)
    assert leases(conn) == [("w2", 1, 1)], "the expired lease is gone"


def test_extend_leases_renews_the_lease_of_what_the_worker_holds(conn):
    ids = [insert(conn, f"k{number}").event_id for number in range(2)]
    claim(conn, worker="w1", lease=5)
    with conn, conn.cursor() as cursor:
        assert outbox.extend_leases(cursor, ids, worker="w2", lease_seconds=600) == 0
        assert outbox.extend_leases(cursor, ids, worker="w1", lease_seconds=600) == 2
        cursor.execute(
            "select extract(epoch from expires_at - now())::int from integration.outbox_lease"
        )
        assert cursor.fetchone()[0] == pytest.approx(600, abs=2)


def test_a_claim_outside_read_committed_is_refused_and_leases_nothing(conn):
    """Under one snapshot a claim could miss the lease another claim just wrote."""
    insert(conn, "k1")
    with (
        pytest.raises(psycopg2.errors.InvalidParameterValue, match="READ COMMITTED"),
        conn,
        conn.cursor() as cursor,
    ):
        cursor.execute("set transaction isolation level repeatable read")
        outbox.claim(cursor, worker="w1")
    assert leases(conn) == []
    assert [event.attempts for event in claim(conn)] == [1]


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
    "extend: null ids": "select integration.extend_leases(null, 'w')",
    "extend: empty worker": "select integration.extend_leases(array[gen_random_uuid()], ' ')",
    "extend: no lease time": "select integration.extend_leases(array[gen_random_uuid()], 'w', 0)",
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
    assert "Seq Scan" not in due_plan, due_plan
    assert "outbox_due_idx" in due_plan, due_plan


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


def claim_plans(conn, cursor, limit: int = 1000) -> str:
    """The plans of one claim of up to ``limit`` events, as auto_explain reports them."""
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
    outbox.claim(cursor, worker="w1", limit=limit)
    return " ".join(conn.notices)


def insert_raw(cursor, count: int, status: str = "pending") -> None:
    cursor.execute(
        "insert into integration.outbox (event_type, aggregate_type, aggregate_id, payload,"
        " idempotency_key, status) select 'test', 'a', g::text, '{}',"
        " %(status)s || '-' || g, %(status)s from generate_series(1, %(count)s) g",
        {"status": status, "count": count},
    )


def test_claim_walks_the_due_index_and_never_scans_the_outbox(conn):
    """A scan of the outbox at every claim grows with the backlog (6 ms at 30,000 rows); a claim
    walks the due index and writes one lease, also when a lease ran out."""
    with conn, conn.cursor() as cursor:
        insert_raw(cursor, 5000)
        cursor.execute("analyze integration.outbox")
        outbox.claim(cursor, worker="crashed", limit=10)
        helpers.expire_leases(cursor)
        plans = claim_plans(conn, cursor)
    assert "Seq Scan on outbox " not in plans, plans
    assert "Index Scan using outbox_due_idx" in plans, plans
    assert "Insert on outbox_lease" in plans, plans
    assert "Update on outbox o" in plans and "outbox_pkey" in plans, "expired: by primary key"


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
    assert "Index Cond: ((aggregate_key = " in plans, plans


def test_records_that_share_an_order_key_hold_back_only_their_own_events(conn):
    """The order check finds a record's earlier events by a 64-bit hash of its names, and two
    records can share one. With every record given the same key, each record's first event is
    still claimed at once, and only its own second one waits."""
    try:
        with conn.cursor() as cursor:
            cursor.execute("show server_version_num")
            if int(cursor.fetchone()[0]) < 170000:
                pytest.skip("order key collision test skipped: SET EXPRESSION needs PostgreSQL 17")
            cursor.execute(
                "alter table integration.outbox alter column aggregate_key set expression as (0)"
            )
            first_a, first_b, second_a, second_b = (
                helpers.insert_event(cursor, envelope(record), idempotency_key=key).event_id
                for record, key in (("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"))
            )
            cursor.execute("select count(distinct aggregate_key) from integration.outbox")
            assert cursor.fetchone()[0] == 1, "every record shares the one key"
            assert [event.id for event in outbox.claim(cursor, worker="w1", limit=10)] == [
                first_a,
                first_b,
            ]
            assert outbox.ack(cursor, [first_a], worker="w1") == 1
            assert [event.id for event in outbox.claim(cursor, worker="w1", limit=10)] == [second_a]
            cursor.execute("select status from integration.outbox where id = %s", (second_b,))
            assert cursor.fetchone()[0] == "pending", "b's second waits for b's first"
            cursor.execute(OPERATIONS_SQL["held_by_order"])
            assert cursor.fetchone()[0] == 1, "only b's second is held back by its record"
            cursor.execute(OPERATIONS_SQL["waiting_behind"], (second_b,))
            assert cursor.fetchone()[0] == first_b
    finally:
        conn.rollback()  # the outbox as the migrations made it, for the tests after this one


def next_claim_turn(cursor, turn: int) -> None:
    """Make the next claim the ``turn``-th (every 8th looks at the whole due index)."""
    cursor.execute("select setval('integration.claim_turn', %s, false)", (turn,))


def events_of_their_own_records(cursor, count: int) -> list:
    return [
        helpers.insert_event(cursor, envelope(f"r{n}"), idempotency_key=f"r{n}").event_id
        for n in range(count)
    ]


def two_of_one_record_then_others(cursor, count: int) -> list:
    """Two events of record x, then ``count`` of records of their own: their ids in that order."""
    two = [
        helpers.insert_event(cursor, envelope("x"), idempotency_key=key).event_id for key in ("x1", "x2")
    ]
    return two + events_of_their_own_records(cursor, count)


def claimed_ids(cursor, limit: int = 5, worker: str = "w1") -> list:
    return [event.id for event in outbox.claim(cursor, worker=worker, limit=limit)]


def test_a_claim_after_a_full_batch_starts_after_it_and_every_8th_looks_at_everything(conn):
    """In a backlog a claim starts after the newest full batch instead of reading every event in
    flight again. What that scan does not see (an event its record held back until now; one
    committed late, behind events claimed already) the full scan of the 8th claim finds."""
    with conn, conn.cursor() as cursor:
        first_x, second_x, *others = two_of_one_record_then_others(cursor, 60)
        next_claim_turn(cursor, 1)
        assert claimed_ids(cursor) == [first_x, *others[:4]], "x's second waits for x's first"
        assert outbox.ack(cursor, [first_x], worker="w1") == 1
        late = helpers.insert_event(cursor, envelope("late"), idempotency_key="late").event_id
        cursor.execute(  # as if its ingest committed after the batch before it was claimed
            "update integration.outbox set available_at = now() - interval '1 minute' where id = %s",
            (late,),
        )
        plans = claim_plans(conn, cursor, limit=5)  # the 2nd claim
        assert "AND (ROW(available_at, seq) > ROW(" in plans, "it starts after the first batch"
        later = [claimed_ids(cursor) for _turn in range(3, 8)]
        eighth = claimed_ids(cursor)
        cursor.execute("select count(*) from integration.outbox_lease")
        leases = cursor.fetchone()[0]
    assert later == [others[n : n + 5] for n in range(9, 34, 5)], "each after the one before"
    assert eighth == [late, second_x, *others[34:37]], "the 8th claim looks at everything"
    assert leases == 8


def test_a_claim_that_finds_nothing_after_the_last_full_batch_looks_at_everything_at_once(conn):
    with conn, conn.cursor() as cursor:
        first_x, second_x, *others = two_of_one_record_then_others(cursor, 4)
        next_claim_turn(cursor, 1)
        assert claimed_ids(cursor) == [first_x, *others]
        assert outbox.ack(cursor, [first_x], worker="w1") == 1
        assert claimed_ids(cursor) == [second_x], "its turn came: claimed by the next claim"


def test_a_claim_that_takes_back_a_lease_looks_at_everything(conn):
    """An expired lease's events are due again where they were, before the newest batch."""
    with conn, conn.cursor() as cursor:
        ids = events_of_their_own_records(cursor, 15)
        next_claim_turn(cursor, 1)
        assert claimed_ids(cursor, worker="crashed") == ids[:5]
        assert claimed_ids(cursor) == ids[5:10]
        cursor.execute(
            "update integration.outbox_lease set expires_at = now() - interval '1 s'"
            " where worker = 'crashed'"
        )
        assert claimed_ids(cursor) == ids[:5], "taken back, and claimed before the newer ones"
        assert claimed_ids(cursor) == ids[10:15]


def rows_handled(cursor, query: str) -> int:
    """The rows every node of ``query``'s plan produced or filtered out, over all its loops: the
    work it did, independent of the machine's speed."""
    cursor.execute(f"explain (analyze, format json) {query}")

    def walk(node: dict) -> int:
        loops = node["Actual Loops"]
        own = loops * (
            node["Actual Rows"]
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Join Filter", 0)
        )
        return int(own) + sum(walk(child) for child in node.get("Plans", []))

    return walk(cursor.fetchone()[0][0]["Plan"])


def test_readers_of_the_state_do_work_in_proportion_to_the_outbox_not_its_square(conn):
    """A join driven the wrong way compares every outbox row with every leased id: under
    statistics taken in a quiet moment, a count over 10,000 events ran for minutes."""
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select count(*) from generate_series(1, 4000) g, lateral integration.insert_outbox_event("
            "'asset.reserved', 'maintenance.equipment', 'r' || g, '{}', 'k' || g)"
        )
        for _ in range(3):
            outbox.claim(cursor, worker="w1", limit=1000)
        # Whatever the planner believes: with only nested loops it may choose, still bounded.
        cursor.execute("set local enable_hashjoin = off; set local enable_mergejoin = off")
        for query in (
            "select count(*) from integration.event_state where status = 'completed'",
            "select status, count(*) from integration.outbox_state group by status",
            "select count(*) from integration.in_flight where expires_at < now()",
        ):
            assert rows_handled(cursor, query) < 100_000, query  # 4,000 x 3,000 if quadratic
        cursor.execute("select status, count(*) from integration.outbox_state group by 1 order by 1")
        assert cursor.fetchall() == [("pending", 1000), ("processing", 3000)]


def outbox_rows_read(cursor) -> int:
    """The outbox rows this transaction has read so far, by scan or by index."""
    cursor.execute(
        "select seq_tup_read + coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables"
        " where relid = 'integration.outbox'::regclass"
    )
    return int(cursor.fetchone()[0])


def test_settling_reads_the_rows_it_settles_not_the_whole_outbox(conn):
    """The planner, told a lease names a thousand ids, hashed the whole outbox to find them: with
    a 30,000-event backlog the ack of a batch read all 30,000 rows."""
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select count(*) from generate_series(1, 3000) g, lateral integration.insert_outbox_event("
            "'asset.reserved', 'maintenance.equipment', 'r' || g, '{}', 'k' || g)"
        )
        cursor.execute("analyze integration.outbox")
        held = [event.id for event in outbox.claim(cursor, worker="w1", limit=100)]
        before = outbox_rows_read(cursor)
        assert outbox.ack(cursor, held[:50], worker="w1") == 50
        assert outbox.release(cursor, held[50:], worker="w1") == 50
        assert outbox_rows_read(cursor) - before <= 200  # hashing the outbox read 2 x 3,000
        cursor.execute("select status, count(*) from integration.outbox_state group by 1")
        assert cursor.fetchall() == [("pending", 2950)]


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
