"""The n8n workflows of integrations/n8n/ imported into a real n8n 2.8.4 and driven by the bus.

n8n is found at N8N_PATH (default ~/n8n), installed there by scripts/install_n8n.sh (minutes,
about 1 GB, so `make test` does not run it); without it these tests are skipped, saying so on
one line. n8n stores its data in a database of the test PostgreSQL server (sqlite3 cannot be
built here). Mattermost is an HTTP sink on loopback and e-mail an aiosmtpd server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import requests
from aiosmtpd.controller import Controller

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.samples import all_samples
from ipai_bus_lib.core.signing import (
    new_standard_webhooks_secret,
    standard_webhooks_headers,
    standard_webhooks_key,
)
from ipai_bus_lib.core.stored_event import StoredEvent
from ipai_bus_lib.delivery.destinations.http_forward import HttpForwardDestination, forward_body
from ipai_bus_lib.storage.db import Database
from ipai_bus_lib.storage.migrator import migrate

from . import helpers
from .sinks import HttpSink, Received, Reply
from .test_router import SmtpRecorder, attempts_of, make_due, make_router, state

N8N_PATH = Path(os.environ.get("N8N_PATH", Path.home() / "n8n")).expanduser()
N8N = N8N_PATH / "node_modules" / ".bin" / "n8n"
WORKFLOWS = Path(__file__).resolve().parent.parent / "integrations" / "n8n"
pytestmark = pytest.mark.skipif(
    not N8N.exists(),
    reason=f"n8n not found at {N8N_PATH}: n8n workflow tests skipped (install it with scripts/install_n8n.sh)",
)
SENDING_ANSWER = 5.0


class N8n:
    """One n8n process of the tests' own: its database, user folder, ports and environment."""

    def __init__(self, home: Path, database_url: str, env: dict[str, str]) -> None:
        parts = urlsplit(database_url)
        self.port, broker = helpers.free_port(), helpers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "n8n.log"
        self.env = {
            **os.environ, **env,
            "DB_TYPE": "postgresdb", "DB_POSTGRESDB_HOST": parts.hostname or "127.0.0.1",
            "DB_POSTGRESDB_PORT": str(parts.port), "DB_POSTGRESDB_DATABASE": parts.path.lstrip("/"),
            "DB_POSTGRESDB_USER": parts.username or "", "DB_POSTGRESDB_PASSWORD": parts.password or "",
            "N8N_USER_FOLDER": str(home), "N8N_PORT": str(self.port), "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_RUNNERS_BROKER_PORT": str(broker), "N8N_ENCRYPTION_KEY": uuid.uuid4().hex,
            "N8N_DIAGNOSTICS_ENABLED": "false", "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            # What the README's n8n page asks of every n8n that runs these workflows:
            "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false", "NODE_FUNCTION_ALLOW_BUILTIN": "crypto",
        }  # fmt: skip
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str) -> None:
        done = subprocess.run(
            [str(N8N), *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0 and "GOT ERROR" not in done.stdout + done.stderr, (
            done.stdout + done.stderr
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(N8N), "start"], env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT
        )
        helpers.wait_until(
            self.receiving, timeout=120, interval=0.5, what=f"n8n's webhook (log: {self.log})"
        )

    def receiving(self) -> bool:
        """The receiver workflow is active once an unsigned POST gets its 401, not n8n's 404."""
        try:
            answer = requests.post(f"{self.url}/webhook/ipai-bus", data=b"{}", timeout=10)
        except requests.RequestException:  # not listening yet, or still starting its workflows
            return False
        return answer.status_code == 401

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def credentials(smtp_port: int, poller_url: str) -> list[dict]:
    poller = urlsplit(poller_url)
    return [
        {"id": "ipaiBusSmtp00001", "name": "IPAI bus SMTP", "type": "smtp",
         "data": {"user": "", "password": "", "host": "127.0.0.1", "port": smtp_port, "secure": False,
                  "disableStartTls": True}},
        {"id": "ipaiBusPgsql0001", "name": "IPAI bus database (service_role)", "type": "postgres",
         "data": {"host": poller.hostname, "port": poller.port, "database": poller.path.lstrip("/"),
                  "user": poller.username, "password": poller.password, "ssl": "disable"}},
    ]  # fmt: skip


def poll_every_second(home: Path) -> Path:
    """The poller as shipped, but polling every second instead of 30 s so the test is short."""
    flow = json.loads((WORKFLOWS / "ipai-bus-poll-outbox.json").read_text())
    trigger = next(n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.scheduleTrigger")
    trigger["parameters"]["rule"]["interval"][0]["secondsInterval"] = 1
    copy = home / "ipai-bus-poll-outbox.json"
    copy.write_text(json.dumps(flow))
    return copy


@pytest.fixture(scope="module")
def mattermost():
    refusing: set[str] = set()

    def answer(request: Received) -> Reply:
        text = request.json()["text"]
        return Reply(status=503) if any(word in text for word in refusing) else Reply()

    with HttpSink(answer) as sink:
        sink.refusing = refusing
        yield sink


@pytest.fixture(scope="module")
def smtp():
    recorder = SmtpRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=helpers.free_port())
    controller.start()
    yield recorder, controller.port
    controller.stop()


def service_role_login(url: str) -> str:
    """A login role of the tests' own that holds service_role, as a poller would connect."""
    password = uuid.uuid4().hex
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("drop role if exists ipai_n8n_poller")
        cursor.execute(f"create role ipai_n8n_poller login password '{password}' in role service_role")
    conn.close()
    parts = urlsplit(url)
    return parts._replace(netloc=f"ipai_n8n_poller:{password}@{parts.hostname}:{parts.port}").geturl()


@pytest.fixture(scope="module")
def n8n(tmp_path_factory, make_database, mattermost, smtp):
    home = tmp_path_factory.mktemp("n8n")
    poller_bus = make_database()
    migrate(poller_bus)
    secret = new_standard_webhooks_secret()
    process = N8n(home, make_database(), {
        "IPAI_BUS_WEBHOOK_SECRET": secret, "MATTERMOST_WEBHOOK_URL": mattermost.url,
        "IPAI_FINANCE_MAIL_FROM": "bus@example.test", "IPAI_FINANCE_MAIL_TO": "filing@example.test",
    })  # fmt: skip
    (home / "credentials.json").write_text(
        json.dumps(credentials(smtp[1], service_role_login(poller_bus)))
    )
    workflows = home / "workflows"
    workflows.mkdir()
    (workflows / "receive.json").write_text((WORKFLOWS / "ipai-bus-receive.json").read_text())
    poll_every_second(workflows)
    process.cli("import:credentials", f"--input={home / 'credentials.json'}")
    process.cli("import:workflow", "--separate", f"--input={workflows}")
    process.cli("publish:workflow", "--id=ipaiBusReceive01")
    process.start()
    process.secret, process.poller_bus = secret, poller_bus
    yield process
    process.stop()


def posts(sink: HttpSink) -> list[str]:
    with sink.lock:
        return [request.json()["text"] for request in sink.received]


def deliver_all(router, database, event_ids, *, rounds: int = 40) -> None:
    for _ in range(rounds):
        router.run_once()
        if all(state(database, event_id)["status"] == "completed" for event_id in event_ids):
            return
        make_due(database)
        time.sleep(0.2)
    raise AssertionError([state(database, event_id) for event_id in event_ids])


def add_samples(database) -> list[uuid.UUID]:
    with database.transaction() as cursor:
        return [
            helpers.insert_event(cursor, sample, idempotency_key=str(uuid.uuid4())).event_id
            for sample in all_samples()
        ]


def stored_event(database, event_id) -> StoredEvent:
    with database.transaction() as cursor:
        cursor.execute(
            "select source, event_type, aggregate_type, aggregate_id, payload, received_at, occurred_at"
            " from integration.event_log where event_id = %s", (event_id,),
        )  # fmt: skip
        source, event_type, aggregate_type, aggregate_id, payload, created, occurred = cursor.fetchone()
    return StoredEvent(
        id=event_id, source=source, event_type=event_type, aggregate_type=aggregate_type,
        aggregate_id=aggregate_id, payload=payload, status="completed", attempts=1, max_attempts=4,
        available_at=created, created_at=created, occurred_at=occurred,
    )  # fmt: skip


def test_every_type_is_verified_routed_and_handled_once(n8n, mattermost, smtp, clean_bus):
    database = Database(clean_bus)
    already = len(posts(mattermost))
    destination = HttpForwardDestination("n8n", f"{n8n.url}/webhook/ipai-bus", n8n.secret)
    router = make_router(database, {"n8n": destination})
    event_ids = add_samples(database)
    deliver_all(router, database, event_ids)

    texts = posts(mattermost)[already:]
    assert len(texts) == 14
    assert sum(":receipt:" in t for t in texts) == 4 and sum(":package:" in t for t in texts) == 4
    assert sum(":calendar:" in t for t in texts) == 6
    assert any(
        "**Expense report submitted for approval**: Maria Santos · 1250.5 PHP" in t for t in texts
    )
    for event_id in event_ids:
        attempts = attempts_of(database, event_id)
        assert [(outcome, status) for _, outcome, status, _ in attempts] == [("delivered", 200)], (
            attempts
        )
    subjects = sorted(m[1].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in smtp[0].messages[-2:])
    assert subjects == [b"BIR 1601-C 2026-01: 3 days overdue", b"BIR 1601-C 2026-01: Filed"]

    # A redelivery of an event n8n handled (its answer lost): answered as a duplicate, not handled.
    again = destination.deliver(stored_event(database, event_ids[0]), None)
    assert again is None or again == 200
    assert len(posts(mattermost)) == already + 14
    destination.close()


@pytest.mark.parametrize(
    "forgery",
    ["wrong secret", "body changed", "other webhook-id", "old timestamp", "no signature"],
)
def test_a_forged_request_is_refused_and_handles_nothing(n8n, mattermost, forgery):
    body = forward_body(stored_event_like(uuid.uuid4()))
    secret = new_standard_webhooks_secret() if forgery == "wrong secret" else n8n.secret
    stamp = int(time.time()) - (600 if forgery == "old timestamp" else 0)
    headers = standard_webhooks_headers(
        standard_webhooks_key(secret), message_id="evt-forged", body=body, timestamp_s=stamp
    )
    if forgery == "body changed":
        body = body.replace(b"1250.5", b"9250.5")
    if forgery == "other webhook-id":
        headers["webhook-id"] = "evt-other"
    if forgery == "no signature":
        del headers["webhook-signature"]
    before = len(posts(mattermost))
    answer = requests.post(
        f"{n8n.url}/webhook/ipai-bus",
        data=body,
        headers={**headers, "content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 401 and answer.json()["error"] == "signature"
    assert len(posts(mattermost)) == before


def stored_event_like(event_id: uuid.UUID) -> StoredEvent:
    sample = next(iter(all_samples()))
    now = datetime.now(timezone.utc)
    return StoredEvent(
        id=event_id, source="odoo", event_type=sample.event_type, aggregate_type=sample.aggregate_type,
        aggregate_id=sample.aggregate_id, payload=dict(sample.payload), status="processing",
        attempts=1, max_attempts=4, available_at=now, created_at=now, occurred_at=now,
    )  # fmt: skip


def test_a_failing_handler_answers_503_and_the_bus_retries_until_it_is_handled_once(
    n8n, mattermost, clean_bus
):
    database = Database(clean_bus)
    destination = HttpForwardDestination("n8n", f"{n8n.url}/webhook/ipai-bus", n8n.secret)
    router = make_router(database, {"n8n": destination})
    [event_id] = add_samples(database)[:1]
    mattermost.refusing.add("Expense report submitted")
    router.run_once()
    failed = state(database, event_id)
    assert failed["status"] == "failed"
    assert attempts_of(database, event_id)[0][1:3] == ("failed", 503)
    mattermost.refusing.clear()
    make_due(database)
    deliver_all(router, database, [event_id])
    assert [a[1:3] for a in attempts_of(database, event_id)] == [("failed", 503), ("delivered", 200)]
    destination.close()


def test_n8n_stopped_holds_the_events_and_they_arrive_once_when_it_is_back(n8n, mattermost, clean_bus):
    database = Database(clean_bus)
    destination = HttpForwardDestination("n8n", f"{n8n.url}/webhook/ipai-bus", n8n.secret)
    router = make_router(database, {"n8n": destination})
    already = len(posts(mattermost))
    n8n.stop()
    try:
        event_ids = add_samples(database)
        router.run_once()
        statuses = [state(database, e)["status"] for e in event_ids]
        assert "completed" not in statuses and "failed" in statuses  # each record's first waits
    finally:
        n8n.start()
    deliver_all(router, database, event_ids)
    assert len(posts(mattermost)) == already + 14
    destination.close()


def test_the_poller_claims_handles_acknowledges_fails_and_gives_up(n8n, mattermost):
    database = Database(n8n.poller_bus)
    with database.transaction() as cursor:
        ordered = [
            helpers.insert_event(cursor, Envelope("expense.submitted", "hr.expense", "77", {
                "employee_name": f"Poller {number}", "amount": number, "currency": "PHP",
                "description": "Taxi", "category": "Travel", "date": "2026-01-22"}),
                idempotency_key=str(uuid.uuid4())).event_id
            for number in range(3)
        ]  # fmt: skip
        refused = helpers.insert_event(cursor, Envelope("asset.reserved", "maintenance.equipment", "5", {
            "asset_name": "Refused projector", "reserved_by_name": "Ana"}), idempotency_key=str(uuid.uuid4())).event_id  # fmt: skip
        unknown = helpers.insert_event(cursor, Envelope("payroll.posted", "hr.payslip", "9", {}),
                                       idempotency_key=str(uuid.uuid4())).event_id  # fmt: skip
    mattermost.refusing.add("Refused projector")
    n8n.cli("publish:workflow", "--id=ipaiBusPollOutbx")  # takes effect at n8n's next start
    n8n.stop()
    n8n.start()
    try:
        helpers.wait_until(
            lambda: (
                all(state(database, e)["status"] == "completed" for e in ordered)
                and state(database, refused)["status"] == "failed"
                and state(database, unknown)["status"] == "dead"
            ),
            timeout=90,
            what="the poller to settle its events",
        )
    finally:
        mattermost.refusing.clear()
    texts = [t for t in posts(mattermost) if "Poller" in t]
    assert [t.split("**: ")[1].split(" ·")[0] for t in texts] == ["Poller 0", "Poller 1", "Poller 2"]
    assert "503" in state(database, refused)["last_error"]
    assert state(database, unknown)["last_error"] == "no handler in the n8n poller for payroll.posted"
