"""Helpers shared by the tests: real processes on loopback, signed requests, stored-row snapshots."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import requests

from ipai_bus_lib.core import signing

from .readiness import LogSource, http_answers, wait_for_server

PRIMARY_SECRET = "receiver-test-secret-primary"
OLD_SECRET = "receiver-test-secret-being-retired"
RETIRED_SECRET = "receiver-test-secret-no-longer-active"
WEBHOOK_PATH = "/functions/v1/odoo-webhook"
BATCH_PATH = WEBHOOK_PATH + "/batch"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    """`ipai-bus ARGS` as a subprocess, with ``env`` over this environment."""
    return subprocess.run(
        [sys.executable, "-m", "ipai_bus_lib.ops.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.05, what: str = "it"):
    """Poll ``predicate`` until it is true; for conditions, not servers (tests/readiness.py)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class RunningProcess:
    process: subprocess.Popen
    base_url: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def wait_for_receiver(
    port: int, *, process: subprocess.Popen | None = None, log: LogSource = None
) -> None:
    """Wait until the receiver on this loopback port answers /readyz with 200 (its database is
    there); a slow answer is "not ready yet" (see tests/readiness.py)."""
    wait_for_server(
        f"the receiver on port {port}",
        http_answers(f"http://127.0.0.1:{port}/readyz"),
        process=process,
        log=log,
    )


@contextlib.contextmanager
def private_cluster(tmp_path) -> Iterator[tuple[Any, str]]:
    """A migrated embedded PostgreSQL of the test's own, for tests that stop or freeze it."""
    from ipai_bus_lib.storage.embedded import EmbeddedPostgres
    from ipai_bus_lib.storage.migrator import migrate

    cluster = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off"})
    url = cluster.ensure_running()
    migrate(url)
    try:
        yield cluster, url
    finally:
        cluster.stop()


@contextlib.contextmanager
def receiver_process(
    database_url: str,
    tmp_path,
    *,
    secrets: str = f"{PRIMARY_SECRET},{OLD_SECRET}",
    workers: int = 1,
    threads: int = 8,
    wait_for: str = "/readyz",
) -> Iterator[RunningProcess]:
    """`ipai-bus serve` as a real subprocess on a free loopback port, once ``wait_for`` is 200."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "IPAI_WEBHOOK_SECRET": secrets}
    log_path = str(tmp_path / f"receiver-{port}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ipai_bus_lib.ops.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--threads",
                str(threads),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = RunningProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for_server(
            f"the receiver on port {port}",
            http_answers(running.base_url + wait_for, statuses=(200, 503)),
            process=process,
            log=running.log,
        )
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def event_body(key_suffix: str = "1", **changes: Any) -> bytes:
    document = {
        "event_type": "expense.submitted",
        "aggregate_type": "hr.expense",
        "aggregate_id": key_suffix,
        "payload": {
            "expense_id": 42,
            "employee_name": "Maria Santos",
            "amount": 1250.5,
            "currency": "PHP",
        },
        "occurred_at": "2026-01-22T07:26:26Z",
        "source": "odoo",
    }
    document.update(changes)
    return json.dumps(document).encode()


def signed(
    body: bytes, *, key: str | None, secret: str = PRIMARY_SECRET, timestamp_ms: int | None = None
) -> dict[str, str]:
    return signing.signature_headers(secret, body, idempotency_key=key, timestamp_ms=timestamp_ms)


def snapshot(database_url: str) -> dict[str, Any]:
    """Every stored row of both tables, to compare before and after a refused request."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "select id, status, attempts, idempotency_key, payload"
                " from integration.outbox order by id"
            )
            outbox_rows = cursor.fetchall()
            cursor.execute(
                "select event_id, idempotency_key, payload from integration.event_log order by event_id"
            )
            log_rows = cursor.fetchall()
        return {"outbox": outbox_rows, "event_log": log_rows}
    finally:
        conn.close()


def expire_leases(cursor: Any) -> None:
    """Make every lease run out, as when the workers holding them died."""
    cursor.execute("update integration.outbox_lease set expires_at = now() - interval '1 s'")


def complete_by_hand(cursor: Any, event_id: Any, *, days_ago: int = 0, attempt: int = 1) -> None:
    """Make ``event_id`` completed as the router would ``days_ago`` days ago: its delivered
    attempt (number ``attempt``) recorded, its outbox row gone, its audit copy back-dated (the
    log's append-only trigger is bypassed for that, so call it last in its transaction)."""
    cursor.execute(
        "insert into integration.delivery_attempts"
        " (event_id, attempt, worker, destination, outcome, attempted_at)"
        " values (%s, %s, 'test', 'mattermost', 'delivered', now() - make_interval(days => %s))",
        (event_id, attempt, days_ago),
    )
    cursor.execute("delete from integration.outbox where id = %s", (event_id,))
    cursor.execute("set local session_replication_role = replica")
    cursor.execute(
        "update integration.event_log set received_at = now() - make_interval(days => %s)"
        " where event_id = %s",
        (days_ago, event_id),
    )


def counts(database_url: str) -> tuple[int, int]:
    stored = snapshot(database_url)
    return len(stored["outbox"]), len(stored["event_log"])


def batch_event(key: str, **changes: Any) -> dict[str, Any]:
    """One element of a batch body: event_body's envelope with its idempotency key."""
    return {**json.loads(event_body(key)), "idempotency_key": key, **changes}


def batch_body(events: list[Any]) -> bytes:
    return json.dumps({"events": events}).encode()


def post_batch(base_url: str, body: bytes, headers: Mapping[str, str]) -> requests.Response:
    return requests.post(base_url + BATCH_PATH, data=body, headers=dict(headers), timeout=30)


@contextlib.contextmanager
def key_held_by_another_request(database_url: str, key: str = "held") -> Iterator[None]:
    """While inside: ``key`` inserted by a transaction that has not committed, as a concurrent
    request for the same key holds it; rolled back at the end."""
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "insert into integration.event_key (source, idempotency_key, event_id)"
                " values ('odoo', %s, gen_random_uuid())",
                (key,),
            )
        yield
    finally:
        holder.rollback()
        holder.close()


def send_at_once(base_url: str, bodies: list[bytes], *, key: str) -> list[requests.Response]:
    """Each batch body signed under its own batch key, all posted at one moment; the answers."""
    headers = [signed(body, key=f"{key}-{n}") for n, body in enumerate(bodies)]
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def post_one(n: int) -> None:
        barrier.wait()
        answers[n] = post_batch(base_url, bodies[n], headers[n])

    threads = [threading.Thread(target=post_one, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def send_overlapping_batches(
    base_url: str, *, senders: int = 8, rounds: int = 4, per_batch: int = 300
) -> int:
    """Rounds of ``senders`` batches holding the same new keys, each in its own order, sent at
    once; asserts every answer is 200 and each key stored once. Returns the events stored."""
    for round_number in range(rounds):
        keys = [f"overlap-{round_number}-{i}" for i in range(per_batch)]
        bodies = [
            batch_body(
                [
                    batch_event(key, aggregate_id=key)
                    for key in random.Random(sender).sample(keys, len(keys))
                ]
            )
            for sender in range(senders)
        ]
        answers = send_at_once(base_url, bodies, key=f"round-{round_number}")
        assert [a.status_code for a in answers] == [200] * senders, [a.text for a in answers]
        assert sum(a.json()["stored"] for a in answers) == per_batch
        assert sum(a.json()["duplicates"] for a in answers) == per_batch * (senders - 1)
    return rounds * per_batch


def post(base_url: str, body: bytes, headers: Mapping[str, str], **kwargs) -> requests.Response:
    return requests.post(base_url + WEBHOOK_PATH, data=body, headers=dict(headers), timeout=15, **kwargs)


def console_sign_in(
    base: str, operator: str, password: str
) -> tuple[requests.Session, requests.Response]:
    """A browser-like session signed in to the operator console (the sign-in form's token
    taken from the page, as a browser would); the sign-in's answer beside it."""
    session = requests.Session()
    page = session.get(base + "/login", timeout=10).text
    token = re.search(r'name="login_token" value="([^"]+)"', page)[1]  # type: ignore[index]
    answer = session.post(
        base + "/login",
        data={"login_token": token, "operator": operator, "password": password},
        allow_redirects=False,
        timeout=10,
    )
    return session, answer


def insert_event(
    cursor,
    envelope,
    *,
    idempotency_key: str,
    signature_digest: str | None = None,
    max_attempts: int = 4,
):
    """Store one event straight through integration.insert_outbox_event (as SQL clients and
    the seed's n8n flows do), without the receiver's signed-request copy; a duplicate writes
    nothing. Returns outbox.InsertResult."""
    from psycopg2.extras import Json

    from ipai_bus_lib.core import exact_json
    from ipai_bus_lib.storage.outbox import InsertResult

    cursor.execute(
        "select event_id, duplicate from integration.insert_outbox_event("
        " p_event_type => %s, p_aggregate_type => %s, p_aggregate_id => %s, p_payload => %s,"
        " p_idempotency_key => %s, p_source => %s, p_occurred_at => %s,"
        " p_signature_digest => %s, p_max_attempts => %s)",
        (
            envelope.event_type,
            envelope.aggregate_type,
            envelope.aggregate_id,
            Json(dict(envelope.payload), dumps=exact_json.dumps),
            idempotency_key,
            envelope.source,
            envelope.occurred_at,
            signature_digest,
            max_attempts,
        ),
    )
    event_id, duplicate = cursor.fetchone()
    return InsertResult(event_id=event_id, duplicate=duplicate)


def insert_event_log(cursor, event_id) -> int:
    """Copy an outbox event into the append-only event_log; returns the log row's id."""
    cursor.execute("select integration.insert_event_log(p_event_id => %s)", (event_id,))
    return int(cursor.fetchone()[0])


def assert_routes_check_refuses(routes: Path, good: str, wrong_lines: list[tuple[str, str]]) -> None:
    """``good`` (a routes file) passes `routes check`; each (line, why) put in place of the line
    setting the same key is refused in one line saying ``why``, and no traceback."""
    routes.write_text(good)
    checked = cli("routes", "check", str(routes))
    assert checked.returncode == 0, checked.stderr
    for wrong, why in wrong_lines:
        key = wrong.split(" =")[0]
        text = "\n".join(wrong if line.startswith(f"{key} =") else line for line in good.splitlines())
        routes.write_text(text + "\n")
        refused = cli("routes", "check", str(routes))
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
