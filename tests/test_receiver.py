"""The receiver as a real gunicorn server on loopback, writing to a real PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests

from ipai_bus_lib.core import signing

from .helpers import (
    BATCH_PATH,
    OLD_SECRET,
    PRIMARY_SECRET,
    RETIRED_SECRET,
    WEBHOOK_PATH,
    batch_body,
    batch_event,
    counts,
    event_body,
    key_held_by_another_request,
    post,
    post_batch,
    private_cluster,
    receiver_process,
    signed,
    snapshot,
    wait_until,
)


@pytest.fixture(scope="module")
def receiver(bus_url, tmp_path_factory):
    with receiver_process(bus_url, tmp_path_factory.mktemp("receiver"), workers=2) as running:
        yield running


@pytest.fixture()
def server(receiver, clean_bus):
    """The module's receiver, over a freshly emptied outbox, with one event already stored."""
    body = event_body("seed")
    response = post(receiver.base_url, body, signed(body, key="seed"))
    assert response.status_code == 200, response.text
    return receiver


def assert_refused(server, clean_bus, response, status: int, error_part: str) -> None:
    """The answer has the contract's status and JSON shape, and nothing stored changed."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["ok"] is False and error_part in document["error"], document
    assert counts(clean_bus) == (1, 1), "a refused request must not store anything"


# --- outcomes of the contract --------------------------------------------------------------------


def test_valid_event_is_stored_with_its_audit_copy(server, clean_bus):
    body = event_body("7")
    response = post(server.base_url, body, signed(body, key="expense.submitted:7:1769066786.0"))
    assert response.status_code == 200
    document = response.json()
    assert document["ok"] is True and document["duplicate"] is False
    stored = snapshot(clean_bus)
    row = next(row for row in stored["outbox"] if str(row[0]) == document["event_id"])
    assert row[1:4] == ("pending", 0, "expense.submitted:7:1769066786.0")
    assert row[4]["employee_name"] == "Maria Santos"
    assert any(str(entry[0]) == document["event_id"] for entry in stored["event_log"])


def test_numeric_aggregate_id_is_stored_as_text(server, clean_bus):
    body = event_body("x", aggregate_id=42)
    response = post(server.base_url, body, signed(body, key="numeric"))
    assert response.status_code == 200


def test_same_key_again_is_a_duplicate_that_writes_nothing(server, clean_bus):
    body = event_body("8")
    first = post(server.base_url, body, signed(body, key="k-8")).json()
    before = snapshot(clean_bus)
    resent = post(server.base_url, body, signed(body, key="k-8")).json()  # a later resend
    assert resent == {"ok": True, "event_id": first["event_id"], "duplicate": True}
    assert snapshot(clean_bus) == before


def test_byte_identical_resend_is_a_duplicate(server, clean_bus):
    body = event_body("9")
    headers = signed(body, key="k-9")
    first = post(server.base_url, body, headers).json()
    again = post(server.base_url, body, headers).json()
    assert again == {"ok": True, "event_id": first["event_id"], "duplicate": True}


@pytest.mark.parametrize(
    ("change", "error_part"),
    [
        ({"x-ipai-signature": None}, "missing x-ipai-signature"),
        ({"x-ipai-signature": "0" * 64}, "invalid signature"),
        ({"x-ipai-signature": "not-hex"}, "invalid signature"),
        ({"x-ipai-timestamp": None}, "missing x-ipai-timestamp"),
        ({"x-ipai-timestamp": "yesterday"}, "milliseconds"),
    ],
)
def test_bad_signature_headers_are_refused(server, clean_bus, change, error_part):
    body = event_body("10")
    headers = signed(body, key="k-10")
    for name, value in change.items():
        headers.pop(name)
        if value is not None:
            headers[name] = value
    assert_refused(server, clean_bus, post(server.base_url, body, headers), 401, error_part)


def test_stale_request_is_refused(server, clean_bus):
    body = event_body("11")
    headers = signed(body, key="k-11", timestamp_ms=signing.now_ms() - 301_000)
    assert_refused(server, clean_bus, post(server.base_url, body, headers), 401, "too old")


def test_future_request_is_refused(server, clean_bus):
    body = event_body("12")
    headers = signed(body, key="k-12", timestamp_ms=signing.now_ms() + 301_000)
    assert_refused(server, clean_bus, post(server.base_url, body, headers), 401, "future")


BAD_BODIES = {
    "not json": (b"{not json", "not valid UTF-8 JSON"),
    "not utf-8": (b'{"event_type": "\xff"}', "not valid UTF-8 JSON"),
    "array": (b"[]", "JSON object"),
    "NaN": (event_body("n").replace(b"1250.5", b"NaN"), "not valid UTF-8 JSON"),
    "number beyond numeric": (event_body("n").replace(b"1250.5", b"1e131072"), "number out of range"),
    "scale beyond numeric": (event_body("n").replace(b"1250.5", b"1e-16384"), "number out of range"),
    "missing payload": (
        json.dumps({"event_type": "test", "aggregate_type": "a", "aggregate_id": "1"}).encode(),
        "missing field: payload",
    ),
    "payload not object": (event_body("n", payload=[1]), "payload must be a JSON object"),
    "bad event type": (event_body("n", event_type="Expense Submitted"), "event_type"),
    "NUL in payload": (event_body("n", payload={"a": "\u0000"}), "NUL"),
    "control char in aggregate": (event_body("n", aggregate_type="hr\nexpense"), "aggregate_type"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_malformed_bodies_are_refused(server, clean_bus, case):
    body, error_part = BAD_BODIES[case]
    response = post(server.base_url, body, signed(body, key="k-bad"))
    assert_refused(server, clean_bus, response, 400, error_part)


@pytest.mark.parametrize("key", [None, "", "x" * 256, "tab\tkey"])
def test_bad_idempotency_keys_are_refused(server, clean_bus, key):
    body = event_body("13")
    headers = signed(body, key="placeholder")
    headers.pop("x-idempotency-key")
    if key is not None:
        headers["x-idempotency-key"] = key
    response = post(server.base_url, body, headers)
    assert_refused(server, clean_bus, response, 400, "x-idempotency-key")


def test_oversized_body_is_refused_from_its_length(server, clean_bus):
    body = event_body("14", payload={"blob": "x" * (256 * 1024)})
    response = post(server.base_url, body, signed(body, key="k-14"))
    assert_refused(server, clean_bus, response, 413, "larger than")


def test_oversized_chunked_body_is_refused(server, clean_bus):
    body = event_body("15", payload={"blob": "x" * (300 * 1024)})
    chunks = (body[index : index + 65536] for index in range(0, len(body), 65536))
    response = post(server.base_url, chunks, signed(body, key="k-15"))  # a generator: chunked
    assert_refused(server, clean_bus, response, 413, "larger than")


@pytest.mark.parametrize(
    ("path", "length"),
    [
        (WEBHOOK_PATH, 10 * 1024 * 1024),
        (WEBHOOK_PATH, 300 * 1024),  # #22 item 6: over this path's limit, under the batch one's
        (WEBHOOK_PATH, 256 * 1024 + 1),
        (BATCH_PATH, 4 * 1024 * 1024 + 1),
    ],
)
def test_announced_size_is_refused_before_the_body_is_sent(server, clean_bus, path, length):
    """The receiver answers 413 from Content-Length alone, with 1 KiB of the body sent; it does
    not wait for the rest (the body deadline is 30 s; the answer must come within 5)."""
    with socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))) as raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {length}\r\n\r\n".encode()
            + b"x" * 1024
        )
        raw.settimeout(5)
        answer = b""
        while b"larger than" not in answer and (chunk := raw.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"larger than" in answer
    assert counts(clean_bus) == (1, 1)


def test_a_body_nested_5000_deep_is_refused_for_its_depth(server, clean_bus):
    """#22 item 9: the sender is told the body nests too deep, not that it is not JSON."""
    deep = b"[" * 5000 + b"]" * 5000
    body = event_body("deep").replace(b'"amount"', b'"deep": ' + deep + b', "amount"')
    response = post(server.base_url, body, signed(body, key="k-deep"))
    assert_refused(server, clean_bus, response, 400, "body nests deeper than 35 levels")
    batch = b'{"events": [' + deep + b"]}"
    response = post_batch(server.base_url, batch, signed(batch, key="k-deep-batch"))
    assert_refused(server, clean_bus, response, 400, "body nests deeper than 35 levels")


def test_a_5000_digit_integer_is_stored_with_every_digit(server, clean_bus):
    """#22 item 9: a long integer is a JSON number, kept exactly (not "not valid JSON")."""
    body = event_body("long").replace(b"1250.5", b"7" * 5000)
    response = post(server.base_url, body, signed(body, key="k-long"))
    assert response.status_code == 200, response.text
    with psycopg2.connect(clean_bus) as conn, conn.cursor() as cursor:
        cursor.execute(
            "select payload->>'amount' from integration.outbox where idempotency_key = 'k-long'"
        )
        assert cursor.fetchone()[0] == "7" * 5000


def test_a_batch_event_over_the_event_limit_is_refused_alone(server, clean_bus):
    """#22 item 5: the per-event limit holds inside a batch; the batch's other events are kept."""
    events = [
        batch_event("light-1"),
        batch_event("heavy", payload={"blob": "x" * 3_500_000}),
        batch_event("light-2"),
    ]
    body = batch_body(events)
    response = post_batch(server.base_url, body, signed(body, key="with-heavy"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["stored", "refused", "stored"]
    assert results[1]["error"] == "event larger than 262144 bytes as compact JSON"
    assert counts(clean_bus) == (3, 3), "the seed and the two light events, nothing of the heavy one"


def test_wrong_method_is_refused(server, clean_bus):
    response = requests.get(server.base_url + WEBHOOK_PATH, timeout=5)
    assert_refused(server, clean_bus, response, 405, "POST")
    assert response.headers["Allow"] == "POST"


def test_wrong_content_type_is_refused(server, clean_bus):
    body = event_body("16")
    headers = {**signed(body, key="k-16"), "Content-Type": "text/plain"}
    assert_refused(server, clean_bus, post(server.base_url, body, headers), 415, "application/json")


def test_content_type_with_charset_is_accepted(server, clean_bus):
    body = event_body("17")
    headers = {**signed(body, key="k-17"), "Content-Type": "application/json; charset=utf-8"}
    assert post(server.base_url, body, headers).status_code == 200


def test_unknown_path_is_404_json(server):
    response = requests.get(server.base_url + "/nothing", timeout=5)
    assert response.status_code == 404 and response.json()["ok"] is False


# --- replay, tampering and rotation ----------------------------------------------------------------


def test_captured_request_replayed_after_the_window_is_refused(server, clean_bus):
    body = event_body("20")
    captured = signed(body, key="k-20", timestamp_ms=signing.now_ms() - 299_000)
    assert post(server.base_url, body, captured).status_code == 200
    before = snapshot(clean_bus)
    time.sleep(1.2)  # the captured request now falls just outside the window
    replay = post(server.base_url, body, captured)
    assert replay.status_code == 401 and "too old" in replay.json()["error"]
    assert snapshot(clean_bus) == before


def test_captured_request_resent_under_a_new_key_is_refused(server, clean_bus):
    body = event_body("21")
    captured = signed(body, key="k-21")
    assert post(server.base_url, body, captured).status_code == 200
    before = snapshot(clean_bus)
    replay = post(server.base_url, body, {**captured, "x-idempotency-key": "k-21-again"})
    assert replay.status_code == 401 and replay.json()["error"] == "replayed signature"
    assert snapshot(clean_bus) == before


def test_replay_with_only_the_second_rotation_digest_is_refused(server, clean_bus):
    body = event_body("22")
    both = signing.signature_headers([PRIMARY_SECRET, OLD_SECRET], body, idempotency_key="k-22")
    assert post(server.base_url, body, both).status_code == 200
    second_digest_only = {
        **both,
        "x-ipai-signature": both["x-ipai-signature"].split(",")[1],
        "x-idempotency-key": "k-22-again",
    }
    replay = post(server.base_url, body, second_digest_only)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed signature"


def test_tampered_body_with_the_original_signature_is_refused(server, clean_bus):
    body = event_body("23")
    headers = signed(body, key="k-23")
    tampered = body.replace(b"1250.5", b"9250.5")
    assert_refused(server, clean_bus, post(server.base_url, tampered, headers), 401, "invalid")


def test_retired_secret_is_refused_and_rotated_secrets_are_accepted(server, clean_bus):
    body = event_body("24")
    assert_refused(
        server,
        clean_bus,
        post(server.base_url, body, signed(body, key="k-24", secret=RETIRED_SECRET)),
        401,
        "invalid signature",
    )
    for number, secret in enumerate([PRIMARY_SECRET, OLD_SECRET]):
        body = event_body(f"25-{number}")
        response = post(server.base_url, body, signed(body, key=f"k-25-{number}", secret=secret))
        assert response.status_code == 200, f"{secret} should be active"


# --- concurrency -----------------------------------------------------------------------------------


def test_fifty_concurrent_identical_requests_store_one_event(server, clean_bus):
    body = event_body("30")
    headers = signed(body, key="k-30")
    barrier = threading.Barrier(50)

    def send(_):
        with requests.Session() as session:
            barrier.wait()
            return session.post(
                server.base_url + WEBHOOK_PATH, data=body, headers=headers, timeout=30
            ).json()

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(send, range(50)))
    assert all(answer["ok"] for answer in answers), answers
    assert sum(not answer["duplicate"] for answer in answers) == 1
    assert len({answer["event_id"] for answer in answers}) == 1
    assert counts(clean_bus) == (2, 2), "one new outbox row and one event_log row"


# --- health, metrics, logs -------------------------------------------------------------------------


def test_readyz_says_when_the_database_misses_migrations(make_database, tmp_path):
    stale = make_database()  # no migration applied
    with receiver_process(stale, tmp_path, wait_for="/healthz") as running:
        ready = requests.get(running.base_url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert "database misses migration(s) 20260122000100" in ready.json()["error"]
        assert "run `ipai-bus migrate`" in ready.json()["error"]
        assert requests.get(running.base_url + "/healthz", timeout=5).status_code == 200, "alive"


def test_healthz_and_metrics(server, clean_bus):
    assert requests.get(server.base_url + "/healthz", timeout=5).json() == {"ok": True}
    assert requests.get(server.base_url + "/readyz", timeout=5).json() == {"ok": True}
    metrics = requests.get(server.base_url + "/metrics", timeout=5).text
    assert 'ipai_receiver_requests_total{outcome="stored"}' in metrics
    assert "ipai_receiver_request_seconds_bucket" in metrics
    assert 'ipai_outbox_events{status="pending"} 1.0' in metrics


def test_request_log_never_holds_secret_signature_or_payload(server, clean_bus):
    body = event_body("40", payload={"employee_name": "Lorna Confidential-Payload"})
    headers = signed(body, key="k-40")
    post(server.base_url, body, headers)
    post(server.base_url, body, {**headers, "x-idempotency-key": "k-40-replay"})
    time.sleep(0.3)
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"stored", "replayed"} <= {line["outcome"] for line in lines}
    for forbidden in (PRIMARY_SECRET, OLD_SECRET, headers["x-ipai-signature"], "Confidential"):
        assert forbidden not in log, "the log leaked a secret, a signature or the payload"


# --- the database going away -----------------------------------------------------------------------


def test_a_key_held_by_another_transaction_is_busy_503_not_an_outage(server, clean_bus):
    """#22 item 2: a lock wait past lock_timeout answers 503 "busy" with Retry-After, and the
    worker still stores other keys at once (the wait did not trip its "database down" latch)."""
    with key_held_by_another_request(clean_bus):
        body = event_body("held")
        response = post(server.base_url, body, signed(body, key="held"))
        assert response.headers["Retry-After"] == "1"
        assert_refused(server, clean_bus, response, 503, "busy with concurrent requests")
        for n in range(4):  # both workers, each more than once
            body = event_body(f"free-{n}")
            assert post(server.base_url, body, signed(body, key=f"free-{n}")).status_code == 200
    body = event_body("held")
    assert post(server.base_url, body, signed(body, key="held")).status_code == 200


def test_requests_beyond_the_queue_are_told_busy_at_once_and_stored_data_is_intact(clean_bus, tmp_path):
    """One thread, held 2 s by a key another transaction holds: of 40 requests sent meanwhile,
    16 wait their turn and the rest are answered 503 "receiver busy" with Retry-After at once."""
    with receiver_process(clean_bus, tmp_path, threads=1) as running:
        with key_held_by_another_request(clean_bus):
            held = event_body("held")
            blocker = threading.Thread(
                target=post, args=(running.base_url, held, signed(held, key="held"))
            )
            blocker.start()
            time.sleep(0.3)  # the thread is now waiting on the held key
            answers: list = [None] * 40

            def send(n: int) -> None:
                body = event_body(f"q-{n}")
                answers[n] = post(running.base_url, body, signed(body, key=f"q-{n}"))

            senders = [threading.Thread(target=send, args=(n,)) for n in range(40)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            blocker.join()
    busy = [response for response in answers if response.status_code == 503]
    assert busy and all(r.json() == {"ok": False, "error": "receiver busy, retry later"} for r in busy)
    assert all(r.headers["Retry-After"] == "1" for r in busy)
    stored = [response for response in answers if response.status_code == 200]
    assert len(stored) + len(busy) == 40
    assert counts(clean_bus) == (len(stored), len(stored)), "each answered 200 is stored, no other"


def test_database_stopped_mid_run_gives_503_then_recovers(tmp_path):
    with private_cluster(tmp_path) as (cluster, url):
        with receiver_process(url, tmp_path) as running:
            body = event_body("50")
            assert post(running.base_url, body, signed(body, key="k-50")).status_code == 200
            cluster.stop()
            body = event_body("51")
            started = time.monotonic()
            response = post(running.base_url, body, signed(body, key="k-51"))
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < 10, "503 must come within a bounded time"
            assert response.json() == {"ok": False, "error": "database unavailable, retry later"}
            assert requests.get(running.base_url + "/readyz", timeout=10).status_code == 503
            assert requests.get(running.base_url + "/healthz", timeout=10).status_code == 200
            cluster.ensure_running()
            # The pool waits a moment before it tries a database that stopped answering.
            wait_until(
                lambda: post(running.base_url, body, signed(body, key="k-51")).status_code == 200,
                timeout=5,
                interval=0.2,
                what="the receiver to serve again without a restart",
            )
            assert requests.get(running.base_url + "/readyz", timeout=10).status_code == 200
            assert counts(url) == (2, 2)


def test_an_underscore_header_is_not_taken_for_the_dashed_one(server, clean_bus):
    """`x_idempotency_key: K2` beside `x-idempotency-key: K1`: the event is K1's, as sent."""
    body = event_body("under")
    headers = {**signed(body, key="K1-dashed"), "x_idempotency_key": "K2-underscore"}
    assert post(server.base_url, body, headers).status_code == 200
    keys = [row[3] for row in snapshot(clean_bus)["outbox"]]
    assert "K1-dashed" in keys and "K2-underscore" not in keys
    alone = {k: v for k, v in signed(body, key="x").items() if k != "x-idempotency-key"}
    refused = post(server.base_url, body, {**alone, "x_idempotency_key": "K3-underscore"})
    assert refused.status_code == 400 and "x-idempotency-key" in refused.json()["error"]
    assert [row[3] for row in snapshot(clean_bus)["outbox"]] == keys, "nothing stored"
