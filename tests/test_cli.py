"""The ``ipai-bus`` command line as a user runs it: real processes, a real database."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import psycopg2
import pytest
import requests

from ipai_bus_lib.core.envelope import Envelope

from . import helpers
from .helpers import cli, console_sign_in, free_port, snapshot, wait_until
from .readiness import http_answers, log_says, wait_for_server


@pytest.fixture()
def bus_env(clean_bus) -> dict[str, str]:
    return {"DATABASE_URL": clean_bus}


def seed_states(url: str) -> dict[str, uuid.UUID]:
    """One pending, one failed, two dead (an expense and an asset) and one completed event."""
    conn = psycopg2.connect(url)
    ids = {}
    with conn, conn.cursor() as cursor:
        for name, event_type in [
            ("pending", "expense.submitted"),
            ("failed", "expense.paid"),
            ("dead", "expense.approved"),
            ("dead_asset", "asset.overdue"),
            ("completed", "asset.reserved"),
        ]:
            envelope = Envelope(event_type, "x", name, {"amount": 1})
            ids[name] = helpers.insert_event(cursor, envelope, idempotency_key=name).event_id
        cursor.execute(
            "update integration.outbox set status = 'failed', attempts = 1,"
            " last_error = 'HTTP 502: bad gateway', available_at = now() + interval '30 s'"
            " where id = %s",
            (ids["failed"],),
        )
        cursor.execute(
            "update integration.outbox set status = 'dead', attempts = 4,"
            " last_error = 'HTTP 404: no such channel' where id = any(%s)",
            ([ids["dead"], ids["dead_asset"]],),
        )
        helpers.complete_by_hand(cursor, ids["completed"], days_ago=40)
    conn.close()
    return ids


def status_of(url: str, event_id) -> tuple[str, int]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute("select status, attempts from integration.event_state where id = %s", (event_id,))
        found = cursor.fetchone()
    conn.close()
    return found


# --- status, events -----------------------------------------------------------------------------


def test_status_shows_what_is_pending_failed_and_dead(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    result = cli("status", env=bus_env)
    assert result.returncode == 0, result.stderr
    assert "pending 1  processing 0  completed 1  failed 1  dead 2" in result.stdout
    assert str(ids["dead"]) in result.stdout and "HTTP 404: no such channel" in result.stdout
    document = json.loads(cli("status", "--json", env=bus_env).stdout)
    assert document["by_status"]["dead"] == 2 and document["oldest_pending_seconds"] >= 0
    # insert_outbox_event writes each audit copy; the completed one was accepted 40 days ago.
    assert document["event_log_last_hour"]["total"] == 4


def test_status_names_a_source_two_odoo_databases_send_under(bus_env, clean_bus):
    """Odoo scopes its keys to its database (key@database.uuid): two databases under one
    source name are told apart by those, and status says so; one database per source is
    quiet, as are keys that name no database."""
    conn = psycopg2.connect(clean_bus)
    with conn, conn.cursor() as cursor:
        for source, database in [
            ("odoo-shared", uuid.uuid4()),
            ("odoo-shared", uuid.uuid4()),
            ("odoo-manila", uuid.uuid4()),
            ("odoo-manila", None),
        ]:
            envelope = Envelope("asset.overdue", "maintenance.equipment", "57", {"x": 1}, source=source)
            key = "asset.overdue:57:1796083200.0" + (f"@{database}" if database else "")
            helpers.insert_event(cursor, envelope, idempotency_key=key)
    conn.close()
    shown = cli("status", env=bus_env)
    assert shown.returncode == 0, shown.stderr
    assert "Sources shared by several Odoo databases" in shown.stdout
    assert "odoo-shared: 2 databases" in shown.stdout and "odoo-manila:" not in shown.stdout
    document = json.loads(cli("status", "--json", env=bus_env).stdout)
    assert document["sources_shared_by_databases"] == [{"source": "odoo-shared", "databases": 2}]


def test_events_show_and_tail(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    shown = cli("events", "show", str(ids["dead"]), env=bus_env)
    assert shown.returncode == 0 and "status dead   attempts 4/4" in shown.stdout
    assert "HTTP 404: no such channel" in shown.stdout
    tail = cli("events", "tail", "-n", "10", env=bus_env)
    assert tail.returncode == 0 and tail.stdout.count("\n") == 5, "every stored event is audited"


def test_events_show_of_an_unknown_or_malformed_id(bus_env, clean_bus):
    unknown = cli("events", "show", str(uuid.uuid4()), env=bus_env)
    assert unknown.returncode == 1 and "no event" in unknown.stderr
    malformed = cli("events", "show", "not-a-uuid", env=bus_env)
    assert malformed.returncode == 2 and "is not an event id" in malformed.stderr, "a usage error"


# --- retry, purge ---------------------------------------------------------------------------------


def test_retry_by_id_resets_attempts_and_is_audited(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    result = cli(
        "retry", str(ids["dead"]), "--reason", "channel recreated", "--by", "ops@test", env=bus_env
    )
    assert result.returncode == 0, result.stderr
    assert "1 event(s) back to pending" in result.stdout
    assert status_of(clean_bus, ids["dead"]) == ("pending", 0)
    shown = cli("events", "show", str(ids["dead"]), env=bus_env).stdout
    assert "retry by ops@test: channel recreated" in shown


def test_retry_dead_by_type_leaves_others_alone(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    result = cli("retry", "--dead", "--type", "asset.*", env=bus_env)
    assert result.returncode == 0 and "1 event(s) back to pending" in result.stdout
    assert status_of(clean_bus, ids["dead_asset"]) == ("pending", 0)
    assert status_of(clean_bus, ids["dead"]) == ("dead", 4)


def test_retry_of_a_pending_event_changes_nothing(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    before = snapshot(clean_bus)
    result = cli("retry", str(ids["pending"]), env=bus_env)
    assert result.returncode == 0
    assert result.stdout.strip() == (
        "nothing retried: only failed or dead events are (1 pending left alone); no audit record written"
    )
    assert snapshot(clean_bus) == before


def test_retry_of_a_completed_event_claims_no_audit_record(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    result = cli("retry", str(ids["completed"]), str(ids["dead"]), "--by", "ops@test", env=bus_env)
    assert "1 event(s) back to pending (attempts reset), recorded as retried by ops@test" in (
        result.stdout
    )
    assert "left alone (only failed or dead events are retried): 1 completed" in result.stdout
    shown = cli("events", "show", str(ids["completed"]), env=bus_env).stdout
    assert "retry by" not in shown, "the completed event's history holds no retry"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("retry",), "say what to retry: event ids (ipai-bus retry ID…), or --dead"),
        (("retry", "--dead", "00000000-0000-0000-0000-000000000000"), "not both"),
        (("purge", "--completed-older-than", "5m"), "--completed-older-than 5m: at least 1h"),
        (("events", "show", "17"), "'17' is not an event id (a UUID)"),
        (("retry", "--type", "x.*", "00000000-0000-0000-0000-000000000000"), "go with --dead"),
        (("retry", "--dead", "--since", "yesterday"), "is not a duration"),
        (("purge", "--completed-older-than", "soon"), "is not a duration"),
    ],
)
def test_wrong_arguments_give_one_clear_line_and_change_nothing(bus_env, clean_bus, args, message):
    seed_states(clean_bus)
    before = snapshot(clean_bus)
    result = cli(*args, env=bus_env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert snapshot(clean_bus) == before


def test_retry_of_an_unknown_id_changes_nothing(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    before = snapshot(clean_bus)
    result = cli("retry", str(ids["dead"]), str(uuid.uuid4()), env=bus_env)
    assert result.returncode == 2 and "no such event" in result.stderr
    assert snapshot(clean_bus) == before


def keys_of(url: str) -> list[str]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute("select idempotency_key from integration.event_key order by 1")
        keys = [key for (key,) in cursor.fetchall()]
    conn.close()
    return keys


def test_purge_forgets_old_completed_keys_but_keeps_the_log(bus_env, clean_bus):
    ids = seed_states(clean_bus)
    conn = psycopg2.connect(clean_bus)
    with conn, conn.cursor() as cursor:  # completed two days ago: its key is kept at 30d
        envelope = Envelope("asset.reserved", "x", "new", {"amount": 1})
        fresh = helpers.insert_event(cursor, envelope, idempotency_key="fresh").event_id
        helpers.complete_by_hand(cursor, fresh, days_ago=2)
    conn.close()
    result = cli("purge", "--completed-older-than", "30d", env=bus_env)
    assert result.returncode == 0 and "1 completed event(s) purged" in result.stdout
    assert keys_of(clean_bus) == ["dead", "dead_asset", "failed", "fresh", "pending"]
    assert status_of(clean_bus, ids["completed"]) == ("completed", 1)
    shown = cli("events", "show", str(ids["completed"]), env=bus_env)
    assert shown.returncode == 0 and "status completed   attempts 1" in shown.stdout
    assert cli("purge", "--completed-older-than", "10m", env=bus_env).returncode == 2


def test_unreachable_database_is_reported_with_exit_code_3():
    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    for args in (
        ("status",),
        ("retry", "--dead"),
        ("purge", "--completed-older-than", "30d"),
        ("migrate",),
        ("events", "tail"),
    ):
        result = cli(*args, env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert "database unreachable" in result.stderr and result.stderr.count("\n") == 1


def test_unknown_subcommand_is_a_usage_error():
    result = cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


# --- secrets, send -----------------------------------------------------------------------------


def test_secret_new_writes_a_private_file_and_never_overwrites(tmp_path):
    target = tmp_path / "secret"
    assert cli("secret", "new", "-o", str(target)).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and len(target.read_text().strip()) == 64
    first = target.read_text()
    again = cli("secret", "new", "-o", str(target))
    assert again.returncode == 2 and "pass --force" in again.stderr and target.read_text() == first


def test_secret_new_whsec_makes_a_secret_the_standardwebhooks_library_verifies_with():
    from standardwebhooks.webhooks import Webhook

    from ipai_bus_lib.core.signing import standard_webhooks_headers, standard_webhooks_key

    made = cli("secret", "new", "--whsec")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("whsec_") and len(standard_webhooks_key(secret)) == 32
    assert cli("secret", "new", "--whsec").stdout.strip() != secret, "a new one each time"
    body = b'{"type":"expense.submitted"}'
    headers = standard_webhooks_headers(standard_webhooks_key(secret), message_id="msg_1", body=body)
    assert Webhook(secret).verify(body, headers) == {"type": "expense.submitted"}


def test_send_refuses_bad_json_and_reports_a_missing_receiver(tmp_path):
    env = {"IPAI_WEBHOOK_SECRET": "a-secret-of-sixteen-chars", "IPAI_RECEIVER_PORT": "1"}
    bad = cli("send", "--type", "expense.paid", "--aggregate-id", "1", "--payload", "{oops", env=env)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    missing = cli("send", "--type", "expense.paid", "--sample", env=env)
    assert missing.returncode == 1 and "no receiver at" in missing.stderr


# --- up and demo --------------------------------------------------------------------------------


@pytest.fixture()
def fresh_home(tmp_path) -> dict[str, str]:
    """An empty data and config directory and a free receiver port: a new machine."""
    return {
        "IPAI_BUS_HOME": str(tmp_path / "data"),
        "IPAI_BUS_CONFIG_DIR": str(tmp_path / "config"),
        "IPAI_RECEIVER_PORT": str(free_port()),
        "IPAI_CONSOLE_PORT": str(free_port()),
        "IPAI_ROUTER_METRICS_PORT": "0",
        "DATABASE_URL": "",
        "IPAI_WEBHOOK_SECRET": "",
    }


def _part_roles(cursor) -> dict[str, str]:
    """Which role each part of the bus is connected as (application name -> user name)."""
    cursor.execute(
        "select distinct application_name, usename from pg_stat_activity"
        " where application_name like 'ipai-bus %' and application_name <> 'ipai-bus readiness'"
    )
    return dict(cursor.fetchall())


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_up_from_an_empty_machine_delivers_and_stops_cleanly(fresh_home, tmp_path):
    log = open(tmp_path / "up.log", "w")
    metrics_port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "ipai_bus_lib.ops.cli", "up"],
        env={**os.environ, **fresh_home, "IPAI_ROUTER_METRICS_PORT": str(metrics_port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_server(
            "ipai-bus up",
            log_says(tmp_path / "up.log", "ipai-bus is up"),
            process=up,
            log=tmp_path / "up.log",
        )
        text = (tmp_path / "up.log").read_text()
        assert f"127.0.0.1:{fresh_home['IPAI_RECEIVER_PORT']}/functions/v1/odoo-webhook" in text
        secret = (tmp_path / "config" / "webhook-secret").read_text().strip()
        assert secret not in text, "the secret must never be printed in full"
        router_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        receiver_metrics = f"http://127.0.0.1:{fresh_home['IPAI_RECEIVER_PORT']}/metrics"
        assert f"metrics      router {router_metrics}, receiver {receiver_metrics}" in text
        wait_for_server("the router's metrics under up", http_answers(router_metrics), process=up)
        assert "ipai_router_dead_events_total" in requests.get(router_metrics, timeout=10).text
        assert stat.S_IMODE((tmp_path / "config" / "webhook-secret").stat().st_mode) == 0o600
        sent = cli("send", "--type", "expense.submitted", "--sample", env=fresh_home)
        assert sent.returncode == 0, sent.stderr
        batch = cli("send", "--type", "expense.paid", "--sample", "--count", "3", env=fresh_home)
        assert batch.returncode == 0 and "3 stored" in batch.stdout, batch.stdout + batch.stderr
        wait_until(
            lambda: "📝 **Expense submitted**" in (tmp_path / "up.log").read_text(),
            timeout=20,
            what="the console destination to print the event",
        )
        assert processes_mentioning(str(tmp_path / "data")), "the embedded PostgreSQL runs"
        admin = cli("db", "url", env=fresh_home).stdout.strip()
        with psycopg2.connect(admin) as conn, conn.cursor() as cursor:
            cursor.execute(
                "select distinct usename from pg_stat_activity"
                " where application_name = 'ipai-bus receiver'"
            )
            assert cursor.fetchall() == [("ipai_bus_receiver",)], "the receiver may only ingest"
        console = f"http://127.0.0.1:{fresh_home['IPAI_CONSOLE_PORT']}"
        password_file = tmp_path / "config" / "console-password"
        assert f"console      {console} (password in {password_file})" in text
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password_file.read_text().strip() not in (tmp_path / "up.log").read_text()
        wait_for_server("the console under up", http_answers(console + "/login"), process=up)
        # The console shows every page as its operator role (it may read, retry and purge only).
        session, _ = console_sign_in(console, "operator", password_file.read_text().strip())
        for page in ("/", "/events", "/dead", "/destinations"):
            assert session.get(console + page, timeout=30).status_code == 200, page
        with psycopg2.connect(admin) as conn, conn.cursor() as cursor:
            assert _part_roles(cursor) == {
                "ipai-bus receiver": "ipai_bus_receiver",
                "ipai-bus router": "ipai_bus_dispatcher",
                "ipai-bus router listener": "ipai_bus_dispatcher",
                "ipai-bus console": "ipai_bus_console",
            }, "each part logs in as its own role; none as the owner"
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3, "a receiver, a router and the console run under up"
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
        log.close()
    assert code == 0
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path / "data")) == [], "PostgreSQL left running"
    assert not [
        child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    ], "a receiver or router left running"


@pytest.mark.slow
def test_demo_delivers_all_fourteen_and_leaves_nothing_running(fresh_home, tmp_path):
    result = cli("demo", env=fresh_home, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: sent 14, stored 14, delivered 14" in result.stdout
    log = Path(result.stdout.split("its own output goes to ")[1].split(")")[0])
    assert not log.parent.exists(), "a demo that went well leaves no log behind"
    assert result.stdout.count("[completed]") == 14
    assert processes_mentioning(str(tmp_path / "data")) == []
