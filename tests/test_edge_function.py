"""The Supabase Edge Function under real Deno (the PyPI `deno` package): its own Deno test suite,
and a parity test that sends the same signed requests to it and to the Python receiver."""

from __future__ import annotations

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
    receiver_process,
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
        env=deno_env(url),
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
        yield base, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # deno serve waits on its idle database pool
            process.kill()
            process.wait()
        log.close()


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
    cases = [
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
    return [
        (name, method, WEBHOOK_PATH, body, headers)
        for name, method, body, headers in single_parity_cases()
    ] + batch_parity_cases()


def single_parity_cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, method, body, headers) of the single-event path."""
    body = event_body("900")
    valid = signed(body, key="parity-1")
    rotated = signing.signature_headers(OLD_SECRET, event_body("901"), idempotency_key="parity-2")
    stale = signed(body, key="parity-stale", timestamp_ms=signing.now_ms() - 301_000)
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
    return [
        *[
            (f"occurred_at {name}", "POST", odd, signed(odd, key=f"parity-{name}"))
            for name, odd in odd_moments
        ],
        ("numeric id beyond 2^53", "POST", huge_id, signed(huge_id, key="parity-huge-id")),
        ("valid", "POST", body, valid),
        ("duplicate", "POST", body, valid),
        ("replayed under a new key", "POST", body, {**valid, "x-idempotency-key": "parity-1b"}),
        ("tampered body", "POST", body.replace(b"1250.5", b"9250.5"), valid),
        ("stale", "POST", body, stale),
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
    ]


def stored_rows(url: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select o.source, o.event_type, o.aggregate_type, o.aggregate_id,"
            " o.payload::text, o.idempotency_key, o.signature_digest, o.occurred_at,"
            " o.status, o.attempts, (l.event_id is not null) as logged"
            " from integration.outbox o left join integration.event_log l"
            " on l.event_id = o.id order by o.idempotency_key"
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
    assert stored_rows(python_db) == stored_rows(edge_db), "the stored rows differ"
    assert len(stored_rows(python_db)) == 4 + 3 + 1, (
        "valid, rotated secret, numeric id, year 0099; the batch's three; the mixed batch's new one"
    )


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
