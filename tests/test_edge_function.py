"""The Supabase Edge Function under real Deno (the PyPI `deno` package): its own Deno test suite,
and a parity test that sends the same signed requests to it and to the Python receiver."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
import requests

from ipai_bus_lib.core import signing
from ipai_bus_lib.storage.migrator import migrate

from .helpers import (
    BATCH_PATH,
    OLD_SECRET,
    PRIMARY_SECRET,
    RETIRED_SECRET,
    WEBHOOK_PATH,
    batch_body,
    batch_event,
    event_body,
    free_port,
    key_held_by_another_request,
    receiver_process,
    send_overlapping_batches,
    signed,
)
from .readiness import http_answers, wait_for_server

FUNCTION_DIR = Path(__file__).resolve().parent.parent / "supabase" / "functions" / "odoo-webhook"
DENO = Path(sys.executable).parent / "deno"
SECRETS = f"{PRIMARY_SECRET},{OLD_SECRET}"

pytestmark = pytest.mark.slow


def deno_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "SUPABASE_DB_URL": database_url,
        "IPAI_WEBHOOK_SECRET": SECRETS,
        "NO_COLOR": "1",
    }


def test_deno_suite_passes(clean_bus):
    result = subprocess.run(
        [str(DENO), "test", "--allow-net", "--allow-env", "--allow-read", str(FUNCTION_DIR)],
        env=deno_env(clean_bus),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    summary = re.findall(
        r"^(ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed.*$", output, re.MULTILINE
    )
    assert summary, output[-4000:]
    print(f"\nDeno: {summary[-1][1]} passed, {summary[-1][2]} failed")
    assert result.returncode == 0 and summary[-1][2] == "0", output[-4000:]
    assert int(summary[-1][1]) >= 18, "the vectors and the outcome tests ran"


@pytest.fixture()
def edge_function(make_database, tmp_path):
    url = make_database()
    migrate(url)
    with deno_serve(url, tmp_path, secrets=SECRETS) as base:
        yield base, url


@contextlib.contextmanager
def deno_serve(url: str, tmp_path, *, secrets: str):
    """`deno serve` of the function on a free loopback port, with these webhook secrets."""
    port = free_port()
    log = open(tmp_path / "deno.log", "w")
    process = subprocess.Popen(
        [
            str(DENO),
            "serve",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--allow-net",
            "--allow-env",
            "--allow-read",
            str(FUNCTION_DIR / "handler.ts"),
        ],
        env={**deno_env(url), "IPAI_WEBHOOK_SECRET": secrets},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    try:
        wait_for_server(
            "deno serve",
            http_answers(base + "/nothing", statuses=(404,)),
            process=process,
            log=tmp_path / "deno.log",
        )
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # deno serve waits on its idle database pool
            process.kill()
            process.wait()
        log.close()


# Numbers a float cannot hold, as an Odoo sender might write them: trailing zeros, beyond 2^53,
# exponents, tiny and huge magnitudes. Written by hand: json.dumps cannot spell them.
EXACT_PAYLOAD = (
    '{"amount": 1250.00, "big": 12345678901234567891, "ref": 9007199254740993,'
    ' "cents": 12345678901234567.89, "tiny": 1e-400, "huge": 1E+400, "rate": 1.5e3,'
    ' "zero": -0.0, "scale": 100.000, "nested": [0.10, {"deep": 3.14159265358979323846264}]}'
)


def exact_event(key: str) -> bytes:
    """An event whose payload is EXACT_PAYLOAD, byte for byte."""
    head = event_body(key, payload={"x": "PAYLOAD"}).decode()
    return head.replace('{"x": "PAYLOAD"}', EXACT_PAYLOAD).encode()


def exact_batch_event(key: str) -> str:
    return exact_event(key).decode()[:-1] + f', "idempotency_key": "{key}"}}'


def fidelity_parity_cases() -> list[tuple[str, str, str, bytes, dict[str, str]]]:
    """The numbers of EXACT_PAYLOAD to both receivers, singly and in a batch; and one beyond
    PostgreSQL's numeric, refused alike."""
    single = exact_event("exact-1")
    batch = (
        '{"events": [' + exact_batch_event("exact-b1") + ", " + exact_batch_event("exact-b2") + "]}"
    ).encode()
    beyond = event_body("exact-2").replace(b"1250.5", b"1e131072")
    fine = event_body("exact-3").replace(b"1250.5", b"0.5e-16383")
    largest = event_body("exact-4").replace(b"1250.5", b"9.99e131071")
    long_integer = event_body("exact-5").replace(b"1250.5", b"7" * 5000)
    return [
        ("numbers exactly as sent", "POST", WEBHOOK_PATH, single, signed(single, key="exact-1")),
        ("batch: numbers exactly as sent", "POST", BATCH_PATH, batch, signed(batch, key="exact-b")),
        ("number beyond numeric", "POST", WEBHOOK_PATH, beyond, signed(beyond, key="exact-2")),
        ("scale beyond numeric", "POST", WEBHOOK_PATH, fine, signed(fine, key="exact-3")),
        ("largest numeric", "POST", WEBHOOK_PATH, largest, signed(largest, key="exact-4")),
        ("5000-digit integer", "POST", WEBHOOK_PATH, long_integer, signed(long_integer, key="exact-5")),
    ]


def batch_parity_cases() -> list[tuple[str, str, str, bytes, dict[str, str]]]:
    """(name, method, path, body, headers) of the batch path: the same bytes to both receivers."""
    events = [batch_event(f"b-{i}", aggregate_id="930") for i in range(3)]
    body = batch_body(events)
    valid = signed(body, key="batch-1")
    mixed = batch_body(
        [
            batch_event("b-new"),
            events[0],
            batch_event("b-bad-type", event_type="Bad Type"),
            "not an object",
            batch_event("b-key", idempotency_key=""),
            batch_event("b-new"),
        ]
    )
    many = batch_body([batch_event(f"b-many-{i}") for i in range(1001)])
    heavy = batch_body([batch_event("b-heavy", payload={"blob": "x" * (4 * 1024 * 1024)})])
    empty = b'{"events": []}'
    one_heavy = batch_body(
        [
            batch_event("b-light-1"),
            batch_event("b-3.5MB", payload={"blob": "x" * (3_500_000)}),
            batch_event("b-light-2"),
        ]
    )
    at_the_limit = batch_body([batch_event("b-limit", payload={"blob": "x" * (256 * 1024 - 400)})])
    deep = b'{"events": [' + b"[" * 5000 + b"]" * 5000 + b"]}"
    cases = [
        ("batch: one event over 256 KiB", one_heavy, signed(one_heavy, key="batch-6")),
        ("batch: an event near 256 KiB", at_the_limit, signed(at_the_limit, key="batch-7")),
        ("batch: nested 5000 deep", deep, signed(deep, key="batch-8")),
        ("batch: all valid", body, valid),
        ("batch: sent again", body, valid),
        ("batch: mixed", mixed, signed(mixed, key="batch-2")),
        ("batch: replayed, new key", body, {**valid, "x-idempotency-key": "batch-1b"}),
        ("batch: tampered", body.replace(b"Maria", b"Mario"), valid),
        ("batch: 1001 events", many, signed(many, key="batch-3")),
        ("batch: over 4 MiB", heavy, signed(heavy, key="batch-4")),
        ("batch: empty", empty, signed(empty, key="batch-5")),
    ]
    return [(name, "POST", BATCH_PATH, data, headers) for name, data, headers in cases]


def parity_cases() -> list[tuple[str, str, str, bytes, dict[str, str]]]:
    """(name, method, path, body, headers): the same bytes go to both receivers."""
    return (
        [
            (name, method, WEBHOOK_PATH, body, headers)
            for name, method, body, headers in single_parity_cases()
        ]
        + batch_parity_cases()
        + fidelity_parity_cases()
    )


def single_parity_cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, method, body, headers) of the single-event path."""
    body = event_body("900")
    valid = signed(body, key="parity-1")
    rotated = signing.signature_headers(OLD_SECRET, event_body("901"), idempotency_key="parity-2")
    stale = signed(body, key="parity-stale", timestamp_ms=signing.now_ms() - 301_000)
    in_seconds = signed(body, key="parity-seconds", timestamp_ms=signing.now_ms() // 1000)
    future = signed(body, key="parity-future", timestamp_ms=signing.now_ms() + 301_000)
    malformed, shape = b"{not json", b'["an", "array"]'
    large = event_body("902", payload={"blob": "x" * (300 * 1024)})
    numeric = event_body("903", aggregate_id=903)
    bad_type = event_body("904", event_type="Expense.Submitted")
    odd_moments = [
        (name, event_body(f"91{n}", occurred_at=moment))
        for n, (name, moment) in enumerate(
            [
                ("offset +24:00", "2026-01-22T07:26:26+24:00"),
                ("offset -12:30", "2026-01-22T07:26:26-12:30"),
                ("year 0 once in UTC", "0001-01-01T00:00:00+14:00"),
                ("year 10000 once in UTC", "9999-12-31T23:59:59-11:00"),
                ("year 0099 (not 1999)", "0099-03-01T00:00:00Z"),
            ]
        )
    ]
    huge_id = event_body("920", aggregate_id=2**53)
    deep = event_body("921").replace(
        b'"amount"', b'"deep": ' + b"[" * 5000 + b"]" * 5000 + b', "amount"'
    )
    just_too_deep = event_body("922").replace(
        b'"amount"', b'"deep": ' + b"[" * 32 + b"]" * 32 + b', "amount"'
    )
    brackets_in_text = event_body("923", payload={"note": "[" * 5000 + '\\" {'})
    return [
        *[
            (f"occurred_at {name}", "POST", odd, signed(odd, key=f"parity-{name}"))
            for name, odd in odd_moments
        ],
        ("numeric id beyond 2^53", "POST", huge_id, signed(huge_id, key="parity-huge-id")),
        ("nested 5000 deep", "POST", deep, signed(deep, key="parity-deep")),
        ("payload nested 33 deep", "POST", just_too_deep, signed(just_too_deep, key="parity-35")),
        (
            "brackets inside a string",
            "POST",
            brackets_in_text,
            signed(brackets_in_text, key="parity-txt"),
        ),
        ("valid", "POST", body, valid),
        ("duplicate", "POST", body, valid),
        ("replayed under a new key", "POST", body, {**valid, "x-idempotency-key": "parity-1b"}),
        ("tampered body", "POST", body.replace(b"1250.5", b"9250.5"), valid),
        ("stale", "POST", body, stale),
        ("timestamp in seconds", "POST", body, in_seconds),
        ("future", "POST", body, future),
        ("rotated (old) secret", "POST", event_body("901"), rotated),
        (
            "retired secret",
            "POST",
            event_body("905"),
            signed(event_body("905"), key="parity-5", secret=RETIRED_SECRET),
        ),
        ("malformed JSON", "POST", malformed, signed(malformed, key="parity-6")),
        ("wrong shape", "POST", shape, signed(shape, key="parity-7")),
        ("bad event type", "POST", bad_type, signed(bad_type, key="parity-8")),
        ("numeric aggregate id", "POST", numeric, signed(numeric, key="parity-9")),
        (
            "missing idempotency key",
            "POST",
            body,
            {k: v for k, v in signed(body, key="x").items() if k != "x-idempotency-key"},
        ),
        ("oversized", "POST", large, signed(large, key="parity-10")),
        ("wrong content type", "POST", body, {**valid, "Content-Type": "text/plain"}),
        ("wrong method", "GET", b"", {}),
        (
            "underscore key beside the dashed one",
            "POST",
            event_body("906"),
            {**signed(event_body("906"), key="parity-dash"), "x_idempotency_key": "parity-under"},
        ),
        (
            "underscore key alone",
            "POST",
            event_body("907"),
            {
                **{
                    k: v
                    for k, v in signed(event_body("907"), key="x").items()
                    if k != "x-idempotency-key"
                },
                "x_idempotency_key": "parity-under-alone",
            },
        ),
    ]


def stored_rows(url: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select o.source, o.event_type, o.aggregate_type, o.aggregate_id,"
            " o.payload::text, o.idempotency_key, o.signature_digest, o.occurred_at,"
            " o.status, o.attempts, (l.event_id is not null) as logged, l.payload::text,"
            " m.message, m.signatures"
            " from integration.outbox o left join integration.event_log l"
            " on l.event_id = o.id left join integration.signed_message m"
            " on m.digest = split_part(o.signature_digest, '/', 1)"
            " order by o.idempotency_key"
        )
        rows = cursor.fetchall()
    conn.close()
    return rows


def test_edge_function_and_python_receiver_answer_alike(edge_function, make_database, tmp_path):
    edge_base, edge_db = edge_function
    python_db = make_database()
    migrate(python_db)
    table = [
        f"{'case':<34} {'python':>7} {'edge':>5}  same JSON keys  same error"
        " same per-event results (stored/duplicate/refused)"
    ]
    mismatches = []
    with receiver_process(python_db, tmp_path, secrets=SECRETS) as python:
        for name, method, path, body, headers in parity_cases():
            answers = [
                requests.request(method, base + path, data=body, headers=headers, timeout=30)
                for base in (python.base_url, edge_base)
            ]
            documents = [answer.json() for answer in answers]
            same_status = answers[0].status_code == answers[1].status_code
            same_keys = set(documents[0]) == set(documents[1])
            same_error = documents[0].get("error") == documents[1].get("error")
            results = [_results_without_ids(document) for document in documents]
            same_results = results[0] == results[1]
            table.append(
                f"{name:<34} {answers[0].status_code:>7} {answers[1].status_code:>5}"
                f"  {'yes' if same_keys else 'NO':<14} {'yes' if same_error else 'NO':<10}"
                f" {_summary(documents[0]) if same_results else 'NO'}"
            )
            if not (same_status and same_keys and same_error and same_results):
                mismatches.append((name, documents))
    print("\n" + "\n".join(table))
    assert not mismatches, json.dumps(mismatches, indent=1)
    python_rows, edge_rows = stored_rows(python_db), stored_rows(edge_db)
    for python_row, edge_row in zip(python_rows, edge_rows):
        assert tuple(map(bytes_or_value, python_row)) == tuple(map(bytes_or_value, edge_row)), (
            f"the stored rows differ:\n{python_row}\n{edge_row}"
        )
    assert len(python_rows) == len(edge_rows) == 6 + 3 + 1 + 2 + 1 + 3 + 2, (
        "valid, rotated secret, numeric id, year 0099, the dashed key, brackets inside a string;"
        " the batch's three; the mixed batch's new one; the two light events beside the heavy one;"
        " the one near 256 KiB; the exact numbers, singly and twice in a batch; the largest"
        " numeric; the longest integer"
    )
    for url in (python_db, edge_db):
        assert exact_payloads(url) == [sent_as_jsonb(url)] * 3, "a number changed on its way in"
        assert reverify_from_audit(url, SECRETS.split(",")) == len(python_rows)


def bytes_or_value(value):
    return bytes(value) if isinstance(value, memoryview) else value


def exact_payloads(url: str) -> list[str]:
    """The stored payloads of the exact-number events, as jsonb text, outbox and audit alike."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select o.payload::text, l.payload::text from integration.outbox o"
            " join integration.event_log l on l.event_id = o.id"
            " where o.idempotency_key in ('exact-1', 'exact-b1', 'exact-b2') order by 1"
        )
        rows = cursor.fetchall()
    conn.close()
    assert all(outbox == audit for outbox, audit in rows), "the audit copy differs from the outbox"
    return [outbox for outbox, _ in rows]


def sent_as_jsonb(url: str) -> str:
    """EXACT_PAYLOAD read by PostgreSQL itself from the text that was sent."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute("select %s::jsonb::text", (EXACT_PAYLOAD,))
        text = cursor.fetchone()[0]
    conn.close()
    return text


def reverify_from_audit(url: str, secrets: list[str]) -> int:
    """Re-verify every audited event from the database alone: its signed request's HMAC under a
    secret is one of the digests kept, and the event's payload is the one in that request."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select payload::text, message, signatures, batch_position from integration.signed_event"
        )
        rows = cursor.fetchall()
        verified = 0
        for payload, message, signatures, position in rows:
            message = bytes(message)
            expected = {
                hmac.new(secret.encode(), message, hashlib.sha256).hexdigest() for secret in secrets
            }
            assert expected & set(signatures.split(",")), "a kept signature does not verify"
            body = message.split(b".", 1)[1].decode()
            path = "{payload}" if position is None else f"{{events,{position},payload}}"
            cursor.execute("select (%s::jsonb #> %s::text[])::text", (body, path))
            assert cursor.fetchone()[0] == payload, "the audited payload is not the signed one"
            verified += 1
    conn.close()
    return verified


def _results_without_ids(document: dict) -> list[dict] | None:
    """A batch answer's results with event ids reduced to their presence (ids differ)."""
    if "results" not in document:
        return None
    return [
        {**result, "event_id": "event_id" in result} if "event_id" in result else result
        for result in document["results"]
    ]


def _summary(document: dict) -> str:
    if "results" not in document:
        return "-"
    return f"yes ({document['stored']}/{document['duplicates']}/{document['refused']})"


def test_a_secret_too_short_for_python_is_refused_by_the_edge_function_too(clean_bus, tmp_path):
    """Python refuses to start with a 5-character secret; the Edge Function, which has no start,
    answers 503 with the same words and stores nothing."""
    from ipai_bus_lib.core.errors import ConfigurationError
    from ipai_bus_lib.core.settings import parse_secrets

    with pytest.raises(ConfigurationError) as python_refusal:
        parse_secrets(f"{PRIMARY_SECRET},12345")
    with deno_serve(clean_bus, tmp_path, secrets=f"{PRIMARY_SECRET},12345") as base:
        body = event_body("short-secret")
        answer = requests.post(
            base + WEBHOOK_PATH, data=body, headers=signed(body, key="short"), timeout=30
        )
    assert answer.status_code == 503
    assert answer.json() == {"ok": False, "error": str(python_refusal.value)}
    assert stored_rows(clean_bus) == [], "nothing was stored under a secret the bus refuses"


def test_overlapping_batches_at_once_never_deadlock_in_the_edge_function(edge_function):
    """#22 item 2 in the other twin: the lock order lives in the SQL function both call."""
    base, url = edge_function
    stored = send_overlapping_batches(base, rounds=2)
    assert len(stored_rows(url)) == stored


def test_a_key_held_by_another_transaction_is_busy_503_in_the_edge_function(edge_function):
    """The Edge Function answers a lost race for a key as the Python receiver does: 503 "busy"
    with Retry-After, after one retry, and stores nothing for it."""
    base, url = edge_function
    with key_held_by_another_request(url):
        body = event_body("held")
        answer = requests.post(
            base + WEBHOOK_PATH, data=body, headers=signed(body, key="held"), timeout=30
        )
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"ok": False, "error": "busy with concurrent requests, retry later"}
    assert stored_rows(url) == []
