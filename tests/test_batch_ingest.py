"""Batch ingest from the outside: a real receiver on loopback, a real PostgreSQL, signed batches."""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from ipai_bus_lib.core import batch, contract
from ipai_bus_lib.storage import outbox

from .helpers import (
    PRIMARY_SECRET,
    batch_body,
    batch_event,
    cli,
    post_batch,
    receiver_process,
    send_overlapping_batches,
    signed,
    snapshot,
)


@pytest.fixture(scope="module")
def receiver(bus_url, tmp_path_factory):
    with receiver_process(bus_url, tmp_path_factory.mktemp("batch"), workers=2) as running:
        yield running


def send(receiver, events, *, key="batch-1", **signing):
    body = batch_body(events)
    return post_batch(receiver.base_url, body, signed(body, key=key, **signing))


def stored_rows(database_url):
    """Outbox and event_log rows by event id, with the fields both keep."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cursor:
            columns = "event_type, aggregate_id, payload, idempotency_key, signature_digest"
            cursor.execute(f"select id, {columns} from integration.outbox order by seq")
            queued = {row[0]: row[1:] for row in cursor.fetchall()}
            cursor.execute(f"select event_id, {columns} from integration.event_log")
            log = {row[0]: row[1:] for row in cursor.fetchall()}
        return queued, log
    finally:
        conn.close()


def invalid_events():
    """Five events the single-event path would refuse, each with the reason it would give."""
    return [
        (batch_event("bad-type", event_type="Expense Submitted"), "event_type must be lowercase"),
        (
            {k: v for k, v in batch_event("no-payload").items() if k != "payload"},
            "missing field: payload",
        ),
        (batch_event("bad-time", occurred_at="yesterday"), "occurred_at must be an ISO 8601"),
        (batch_event("x", idempotency_key="\u00e9t\u00e9"), "idempotency_key must be 1-255 printable"),
        ("not an object", "event must be a JSON object"),
    ]


def test_a_batch_of_500_stores_475_answers_20_duplicates_and_refuses_5_with_reasons(receiver, clean_bus):
    earlier = [batch_event(f"dup-{i}") for i in range(20)]
    first = send(receiver, earlier, key="earlier")
    assert first.status_code == 200 and first.json()["stored"] == 20, first.text
    fresh = [batch_event(f"new-{i}") for i in range(475)]
    invalid = invalid_events()
    events = fresh[:200] + earlier + [event for event, _ in invalid] + fresh[200:]

    answer = send(receiver, events, key="big")

    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert (document["stored"], document["duplicates"], document["refused"]) == (475, 20, 5)
    results = document["results"]
    assert len(results) == 500
    assert [r["status"] for r in results[:200]] == ["stored"] * 200
    first_ids = [r["event_id"] for r in first.json()["results"]]
    assert [(r["status"], r["event_id"]) for r in results[200:220]] == [
        ("duplicate", event_id) for event_id in first_ids
    ]
    for result, (_, reason) in zip(results[220:225], invalid):
        assert result["status"] == "refused" and reason in result["error"], result
    assert [r["status"] for r in results[225:]] == ["stored"] * 275
    queued, log = stored_rows(clean_bus)
    assert len(queued) == 495 and log == queued, "event_log copies exactly the stored events"
    stored_ids = [r["event_id"] for r in results if r["status"] == "stored"]
    new_rows = [queued[event_id] for event_id in map(uuid.UUID, stored_ids)]
    assert [row[3] for row in new_rows] == [f"new-{i}" for i in range(475)]
    assert list(queued)[20:] == [uuid.UUID(i) for i in stored_ids], (
        "events are queued in the order of the request"
    )


def test_a_valid_batch_stores_every_event_in_order_with_the_batch_digest(receiver, clean_bus):
    events = [batch_event(f"k{i}", aggregate_id="77") for i in range(5)]
    answer = send(receiver, events)
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["stored"] * 5
    queued, log = stored_rows(clean_bus)
    digests = [row[4] for row in queued.values()]
    assert len({d.rsplit("/", 1)[0] for d in digests}) == 1, "one request, one signature"
    assert [d.rsplit("/", 1)[1] for d in digests] == ["0", "1", "2", "3", "4"]
    assert log == queued


def test_a_key_repeated_inside_a_batch_is_a_duplicate_of_its_first_event(receiver, clean_bus):
    answer = send(receiver, [batch_event("same"), batch_event("same", aggregate_id="2")])
    first, second = answer.json()["results"]
    assert (first["status"], second["status"]) == ("stored", "duplicate")
    assert first["event_id"] == second["event_id"]
    assert len(stored_rows(clean_bus)[0]) == 1


def test_the_same_batch_sent_again_is_all_duplicates(receiver, clean_bus):
    events = [batch_event(f"again-{i}") for i in range(3)]
    body = batch_body(events)
    headers = signed(body, key="again")
    first = post_batch(receiver.base_url, body, headers)
    second = post_batch(receiver.base_url, body, headers)
    assert second.status_code == 200, second.text
    assert [r["status"] for r in second.json()["results"]] == ["duplicate"] * 3
    assert [r["event_id"] for r in second.json()["results"]] == [
        r["event_id"] for r in first.json()["results"]
    ]


def test_a_batch_is_named_by_its_signature_not_by_a_header(receiver, clean_bus):
    """Each event's key is in the signed body: a batch needs no x-idempotency-key, and one sent
    anyway (as senders before 0.2 did) changes nothing. The same signed batch sent again, under
    any header, is answered duplicate, event by event, and stores nothing."""
    body = batch_body([batch_event("replay-1"), batch_event("replay-2")])
    headers = signed(body, key=None)
    assert "x-idempotency-key" not in headers
    first = post_batch(receiver.base_url, body, headers)
    assert first.status_code == 200 and first.json()["stored"] == 2, first.text
    before = snapshot(clean_bus)
    for header in ({}, {"x-idempotency-key": "other"}, {"x-idempotency-key": "\u00e9"}):
        again = post_batch(receiver.base_url, body, {**headers, **header})
        assert again.status_code == 200, again.text
        assert [r["status"] for r in again.json()["results"]] == ["duplicate", "duplicate"]
        assert [r["event_id"] for r in again.json()["results"]] == [
            r["event_id"] for r in first.json()["results"]
        ]
    assert snapshot(clean_bus) == before


@pytest.mark.parametrize(
    "tamper, status, error",
    [
        ("body", 401, "invalid signature"),
        ("old", 401, "timestamp outside the 5 minute window (too old)"),
        ("empty", 400, 'body must be a JSON object {"events": [...]} with at least one event'),
        ("list", 400, 'body must be a JSON object {"events": [...]} with at least one event'),
        ("json", 400, "body is not valid UTF-8 JSON"),
        ("count", 413, "batch of 1001 events: at most 1000 per request"),
        ("bytes", 413, f"body larger than {contract.MAX_BATCH_BYTES} bytes"),
    ],
)
def test_a_bad_batch_is_refused_whole_and_stores_nothing(receiver, clean_bus, tamper, status, error):
    body = batch_body([batch_event("t1"), batch_event("t2")])
    headers = signed(body, key="bad")
    if tamper == "body":
        body = body.replace(b"Maria", b"Mario")
    elif tamper == "old":
        headers = signed(body, key="bad", timestamp_ms=1_000)
    else:
        body = {
            "empty": b'{"events": []}',
            "list": json.dumps([batch_event("t1")]).encode(),
            "json": b'{"events": [',
            "count": batch_body([batch_event(f"c{i}") for i in range(1001)]),
            "bytes": batch_body([batch_event("big", payload={"blob": "x" * contract.MAX_BATCH_BYTES})]),
        }[tamper]
        headers = signed(body, key="bad")
    before = snapshot(clean_bus)
    answer = post_batch(receiver.base_url, body, headers)
    assert (answer.status_code, answer.json()) == (status, {"ok": False, "error": error})
    assert snapshot(clean_bus) == before


def test_two_identical_batches_at_once_store_each_event_once(receiver, clean_bus):
    events = [batch_event(f"race-{i}", aggregate_id=str(i % 7)) for i in range(300)]
    body = batch_body(events)
    headers = signed(body, key="race")
    answers = []
    barrier = threading.Barrier(2)

    def send_once():
        barrier.wait()
        answers.append(post_batch(receiver.base_url, body, headers))

    threads = [threading.Thread(target=send_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    documents = [a.json() for a in answers]
    assert sorted((d["stored"], d["duplicates"]) for d in documents) == [(0, 300), (300, 0)]
    ids = [[r["event_id"] for r in d["results"]] for d in documents]
    assert ids[0] == ids[1]
    queued, log = stored_rows(clean_bus)
    assert len(queued) == 300 and log == queued


def test_overlapping_batches_in_any_order_at_once_never_deadlock_nor_answer_500(receiver, clean_bus):
    """#22 item 2: eight senders, the same new keys each in its own order, all at once."""
    stored = send_overlapping_batches(receiver.base_url)
    queued, log = stored_rows(clean_bus)
    assert len(queued) == stored and log == queued
    fresh = send(receiver, [batch_event("after-the-race")], key="fresh")
    assert fresh.status_code == 200 and fresh.json()["stored"] == 1, "no outage latch was left behind"


def test_the_least_privileged_ingest_role_may_store_batches(bus_url, clean_bus):
    """What `up` runs the receiver as: a member of ipai_bus_ingest, nothing more."""
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("drop role if exists batch_tester")
            cursor.execute("create role batch_tester login password 'batch-tester-pw'")
            cursor.execute("grant ipai_bus_ingest to batch_tester")
        parts = urlsplit(clean_bus)
        limited = urlunsplit(
            parts._replace(netloc=f"batch_tester:batch-tester-pw@{parts.hostname}:{parts.port}")
        )
        events = batch.parse_batch({"events": [batch_event("role-1"), batch_event("role-2")]})
        limited_conn = psycopg2.connect(limited)
        limited_conn.autocommit = True
        try:
            with limited_conn.cursor() as cursor:
                results = outbox.record_batch(
                    cursor,
                    [(e.envelope, e.idempotency_key) for e in events],
                    batch_key="role",
                    signature_digest="digest-role",
                )
        finally:
            limited_conn.close()
        assert [r.duplicate for r in results] == [False, False]
    finally:
        with conn.cursor() as cursor:
            cursor.execute("drop role if exists batch_tester")
        conn.close()


# --- the sender and `ipai-bus send` ----------------------------------------------------------------


def test_send_file_sends_a_batch_and_refuses_a_bad_one_up_front(receiver, clean_bus, tmp_path):
    env = {"IPAI_WEBHOOK_SECRET": PRIMARY_SECRET}
    url = receiver.base_url + "/functions/v1/odoo-webhook"
    good = tmp_path / "batch.json"
    good.write_text(batch_body([batch_event("file-1"), batch_event("file-2")]).decode())
    sent = cli("send", "--file", str(good), "--url", url, env=env)
    assert sent.returncode == 0, sent.stderr
    assert '"stored": 2' in sent.stdout and len(stored_rows(clean_bus)[0]) == 2

    bad = tmp_path / "bad.json"
    bad.write_text(batch_body([batch_event("file-3"), batch_event("file-4", payload=[])]).decode())
    refused = cli("send", "--file", str(bad), "--url", url, env=env)
    assert refused.returncode == 2
    assert f"event 2 of {bad} (events[1])" in refused.stderr
    assert "payload must be a JSON object" in refused.stderr
    assert len(stored_rows(clean_bus)[0]) == 2, "nothing of a refused file was sent"

    keyed = cli("send", "--file", str(good), "--key", "one-key", "--url", url, env=env)
    assert keyed.returncode == 2 and "carry their own" in keyed.stderr
    assert len(stored_rows(clean_bus)[0]) == 2, "nothing sent for a batch given one key"

    too_big = cli("send", "--type", "expense.paid", "--sample", "--count", "5", "--batch-size", "1001")
    assert too_big.returncode == 2 and "at most 1000" in too_big.stderr


def test_send_count_loads_the_receiver_in_batches_and_prints_the_rate(receiver, clean_bus):
    env = {"IPAI_WEBHOOK_SECRET": PRIMARY_SECRET}
    url = receiver.base_url + "/functions/v1/odoo-webhook"
    args = ("send", "--type", "expense.submitted", "--sample", "--url", url)
    loaded = cli(*args, "--count", "1200", "--batch-size", "500", env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert "sent 1200 events in" in loaded.stdout
    assert "1200 stored, 0 duplicates, 0 refused, 0 failed requests" in loaded.stdout
    queued, log = stored_rows(clean_bus)
    assert len(queued) == 1200 and log == queued
    assert len({row[1] for row in queued.values()}) == 1200, "each event its own record"
