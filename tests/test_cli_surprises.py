"""The CLI as a new operator meets it: each surprise once seen, sent again and answered plainly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.secret_files import ensure_secret_file
from ipai_bus_lib.storage.migrator import available_migrations

from . import helpers
from .helpers import (
    PRIMARY_SECRET,
    cli,
    event_body,
    free_port,
    post,
    receiver_process,
    signed,
    snapshot,
    wait_until,
)
from .readiness import http_answers, wait_for_server
from .sinks import HttpSink, Reply
from .test_cli import fresh_home, processes_mentioning, seed_states  # noqa: F401 - fixtures

SINK_SECRET = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk="


def routes_file(tmp_path, secret: str = SINK_SECRET, url: str = "http://127.0.0.1:9/hook"):
    path = tmp_path / "routes.toml"
    path.write_text(
        f'[destinations.sink]\ntype = "http"\nurl = "{url}"\nsecret = "{secret}"\n\n'
        '[[routes]]\nmatch = "*"\ndestinations = ["sink"]\n'
    )
    return path


def into_a_closed_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ipai-bus ARGS | head` at its worst: the reader is gone before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", *args],
            env={**os.environ, **env},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)


def test_output_into_a_closed_pipe_ends_quietly(clean_bus):
    ids = seed_states(clean_bus)
    env = {"DATABASE_URL": clean_bus}
    for args in (("status",), ("events", "show", "--json", str(ids["dead"]))):
        result = into_a_closed_pipe(*args, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_a_bad_standard_webhooks_secret_in_the_routes_file_is_a_configuration_error(tmp_path, clean_bus):
    env = {"DATABASE_URL": clean_bus, "IPAI_ROUTES_FILE": str(routes_file(tmp_path, "whsec_!!"))}
    result = cli("route", env=env, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        "ipai-bus: configuration error: destination sink: a Standard Webhooks secret is whsec_"
        " followed by base64; make one with `ipai-bus secret new --whsec` and give it to both sides"
    )


@pytest.mark.slow
def test_up_checks_the_routes_before_announcing_anything(fresh_home, tmp_path):  # noqa: F811
    env = {**fresh_home, "IPAI_ROUTES_FILE": str(routes_file(tmp_path, "whsec_!!"))}
    result = cli("up", env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is up" not in result.stdout and "destination sink" in result.stderr
    assert processes_mentioning(str(tmp_path / "data")) == [], "nothing was started"


def test_status_does_not_call_a_failed_event_pending(clean_bus):
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    with conn.cursor() as cursor:
        event_id = helpers.insert_event(
            cursor, Envelope("expense.paid", "hr.expense", "5", {}), idempotency_key="f1"
        ).event_id
        cursor.execute(
            "update integration.outbox set status = 'failed', created_at = now() - interval"
            " '17 seconds' where id = %s",
            (event_id,),
        )
    conn.close()
    shown = cli("status", env={"DATABASE_URL": clean_bus}).stdout
    assert "pending 0" in shown and "oldest pending: —" in shown
    assert "oldest failed (retrying): 17s" in shown


def test_a_long_dead_reason_is_cut_between_words(clean_bus):
    ids = seed_states(clean_bus)
    reason = "HTTP 404: " + " ".join(["the channel town-square-operations was archived"] * 5)
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            "update integration.outbox set last_error = %s where id = %s", (reason, ids["dead"])
        )
    conn.close()
    shown = cli("status", env={"DATABASE_URL": clean_bus}).stdout
    [line] = [line.strip() for line in shown.splitlines() if line.strip().startswith("HTTP 404: the")]
    assert line.endswith("…") and len(line) <= 110
    assert reason.startswith(line[:-1]) and reason[len(line) - 1] == " ", "cut at a space"


def test_a_pending_event_held_by_ordering_says_what_it_waits_for(clean_bus):
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    with conn.cursor() as cursor:
        first, second = (
            helpers.insert_event(
                cursor, Envelope("expense.paid", "hr.expense", "77", {}), idempotency_key=key
            ).event_id
            for key in ("held-1", "held-2")
        )
        cursor.execute(
            "update integration.outbox set status = 'failed', available_at = now() + interval"
            " '1 hour' where id = %s",
            (first,),
        )
    conn.close()
    env = {"DATABASE_URL": clean_bus}
    status = cli("status", env=env).stdout
    assert "waiting behind an earlier event of the same record: 1" in status
    shown = cli("events", "show", str(second), env=env).stdout
    assert f"waiting behind event {first} (failed)" in shown
    document = json.loads(cli("events", "show", "--json", str(second), env=env).stdout)
    assert document["waiting_behind"]["id"] == str(first)


@pytest.mark.slow
def test_route_stops_the_embedded_database_it_started_and_only_that(fresh_home, tmp_path):  # noqa: F811
    def run_route_until_ready() -> subprocess.CompletedProcess:
        process = subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "route"],
            env={**os.environ, **fresh_home},
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("router "):
                break
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        return process

    data = str(tmp_path / "data")
    assert run_route_until_ready().returncode == 0
    time.sleep(0.5)
    assert processes_mentioning(data) == [], "route left the database it started running"

    assert cli("db", "start", env=fresh_home).returncode == 0
    try:
        assert run_route_until_ready().returncode == 0
        assert processes_mentioning(data), "a database running before route is left running"
        assert cli("status", env=fresh_home).returncode == 0
    finally:
        cli("db", "stop", env=fresh_home)


def test_serve_finds_the_secret_up_generated(tmp_path, clean_bus):
    config = tmp_path / "config"
    ensure_secret_file(config / "webhook-secret")  # what `ipai-bus up` does on a new machine
    secret = (config / "webhook-secret").read_text().strip()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": clean_bus,
        "IPAI_BUS_CONFIG_DIR": str(config),
        "IPAI_WEBHOOK_SECRET": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ipai_bus_lib.ops.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(
            "serve without IPAI_WEBHOOK_SECRET", http_answers(base + "/healthz"), process=server
        )
        body = event_body("generated")
        answer = post(base, body, signed(body, key="generated", secret=secret))
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_the_receivers_log_line_says_when_who_and_why(bus_url, clean_bus, tmp_path):
    with receiver_process(bus_url, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        body = event_body("log")
        post(receiver.base_url, body, signed(body, key="log", secret="a-wrong-secret-of-16+"))
        post(receiver.base_url, b"{", signed(b"{", key="log2"))
        wait_until(lambda: receiver.log().count('"outcome"') >= 2, what="two log lines")
        lines = [json.loads(line) for line in receiver.log().splitlines() if '"outcome"' in line]
    unauthorized, bad = lines[-2:]
    assert unauthorized["error"] == "invalid signature" and unauthorized["status"] == 401
    assert bad["error"] == "body is not valid UTF-8 JSON" and bad["status"] == 400
    for line in (unauthorized, bad):
        assert line["client"] == "127.0.0.1" and line["time"].endswith("+00:00")
        assert line["path"] == "/functions/v1/odoo-webhook"
    assert PRIMARY_SECRET not in receiver.log()


@pytest.mark.slow
def test_demo_says_why_an_event_is_dead(fresh_home, tmp_path):  # noqa: F811
    with HttpSink(lambda request: Reply(400, b"this channel refuses bots")) as sink:
        env = {**fresh_home, "IPAI_ROUTES_FILE": str(routes_file(tmp_path, url=sink.url))}
        result = cli("demo", "--timeout", "60", env=env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("[dead]") == 14
    assert result.stdout.count("why it is dead: sink: HTTP 400: this channel refuses bots") == 14
    kept = result.stdout.split("demo: the bus's output is kept in ")[1].strip()
    assert Path(kept).exists(), "a demo that failed keeps the bus's output to look into"


def test_wrong_arguments_leave_stored_data_alone(clean_bus):
    seed_states(clean_bus)
    before = snapshot(clean_bus)
    for args in (("retry",), ("purge", "--completed-older-than", "5m"), ("events", "show", "x")):
        assert cli(*args, env={"DATABASE_URL": clean_bus}).returncode == 2
    assert snapshot(clean_bus) == before


def test_route_refuses_a_database_that_misses_migrations(make_database):
    empty = make_database()
    result = cli("route", env={"DATABASE_URL": empty}, timeout=30)
    assert result.returncode == 2, result.stderr
    every = len(available_migrations())
    assert f"misses {every} migration(s)" in result.stderr
    assert "run `ipai-bus migrate`" in result.stderr


def test_serve_stopped_while_a_worker_is_being_born_stops_at_once(bus_url, clean_bus):
    """A stop sent between a worker's fork and its own signal handlers used to be lost: the
    worker lived on until gunicorn's graceful timeout (20 s) ended it with SIGKILL."""
    env = {**os.environ, "DATABASE_URL": clean_bus, "IPAI_WEBHOOK_SECRET": PRIMARY_SECRET}
    for _ in range(5):
        command = [sys.executable, "-m", "ipai_bus_lib.ops.cli", "serve", "--workers", "3"]
        process = subprocess.Popen(
            [*command, "--port", str(free_port())],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        booted = 0
        for line in process.stderr:
            booted += "Booting worker" in line
            if booted == 3:  # printed by the new worker right after the fork
                break
        process.terminate()
        try:
            _, rest = process.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("serve lived on after SIGTERM: a worker lost the stop signal")
        assert process.returncode == 0, rest


def test_help_says_the_default_this_environment_sets():
    """`console --help` said 8789 while IPAI_CONSOLE_PORT chose another port."""
    env = {name: "" for name in ("IPAI_CONSOLE_PORT", "IPAI_RECEIVER_PORT")}
    plain = cli("console", "--help", env=env).stdout
    assert "default 8789; IPAI_CONSOLE_PORT sets another" in " ".join(plain.split())
    chosen = cli("console", "--help", env={**env, "IPAI_CONSOLE_PORT": "9123"}).stdout
    assert "default 9123, from IPAI_CONSOLE_PORT" in " ".join(chosen.split()) and "8789" not in chosen
    served = cli("serve", "--help", env={**env, "IPAI_RECEIVER_PORT": "9124"}).stdout
    assert "default 9124, from IPAI_RECEIVER_PORT" in " ".join(served.split())


def test_send_sample_takes_the_record_asked_for():
    """`--aggregate-id` was ignored with `--sample`: every sample shared one record, so one
    failure held the others back."""
    import argparse

    from ipai_bus_lib.ops.send import envelope_from_arguments

    asked = argparse.Namespace(file=None, sample=True, event_type="expense.submitted", aggregate_id="77")
    envelope = envelope_from_arguments(asked)
    assert envelope.aggregate_id == "77" and envelope.payload["employee_name"]
    default = envelope_from_arguments(argparse.Namespace(**{**vars(asked), "aggregate_id": None}))
    assert default.aggregate_id != "77"


def test_send_file_counts_events_from_one(tmp_path):
    batch = tmp_path / "batch.json"
    good = {
        "event_type": "asset.reserved",
        "aggregate_type": "maintenance.equipment",
        "aggregate_id": "1",
    }
    batch.write_text(
        json.dumps(
            {
                "events": [
                    {**good, "payload": {}, "idempotency_key": "k1"},
                    {**good, "idempotency_key": "k2"},
                ]
            }
        )
    )
    refused = cli("send", "--file", str(batch), env={"IPAI_WEBHOOK_SECRET": "a-secret-of-sixteen-chars"})
    assert (
        refused.returncode == 2 and f"event 2 of {batch} (events[1]) is not valid" in refused.stderr
    ), refused.stderr


def one_completed_event(url: str, *, earlier_error: str | None = None) -> str:
    """One event, delivered (after a failed attempt with this error, if given)."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        event_id = helpers.insert_event(
            cursor, Envelope("asset.reserved", "x", "1", {"booking_id": 1}), idempotency_key="k"
        ).event_id
        if earlier_error:
            cursor.execute(
                "insert into integration.delivery_attempts"
                " (event_id, attempt, worker, destination, outcome, http_status, error)"
                " values (%s, 1, 'test', 'mattermost', 'failed', 503, %s)",
                (event_id, earlier_error),
            )
        helpers.complete_by_hand(cursor, event_id, attempt=2 if earlier_error else 1)
    conn.close()
    return str(event_id)


def test_events_show_does_not_call_a_delivered_events_old_error_its_last(clean_bus):
    event_id = one_completed_event(clean_bus, earlier_error="HTTP 503: busy")
    shown = cli("events", "show", event_id, env={"DATABASE_URL": clean_bus})
    assert shown.returncode == 0, shown.stderr
    assert "status completed   attempts 2" in shown.stdout
    assert "failed     HTTP 503" in shown.stdout and "HTTP 503: busy" in shown.stdout
    assert "last error" not in shown.stdout


def test_status_says_when_nothing_waits(clean_bus):
    """The by-type table used to vanish when nothing waited, leaving the reader to guess why."""
    one_completed_event(clean_bus)
    shown = cli("status", env={"DATABASE_URL": clean_bus})
    assert shown.returncode == 0, shown.stderr
    assert "Not completed, by type\n  none: every event is delivered" in shown.stdout


def test_retrying_an_event_no_route_takes_warns_it_will_die_again(clean_bus, tmp_path):
    ids = seed_states(clean_bus)  # dead: an expense.approved and an asset.overdue
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[destinations.out]\ntype = "console"\n\n[[routes]]\nmatch = "expense.*"\ndestinations = ["out"]\n'
    )
    env = {"DATABASE_URL": clean_bus, "IPAI_ROUTES_FILE": str(routes)}
    asset = cli("retry", str(ids["dead_asset"]), "--reason", "try again", env=env)
    assert asset.returncode == 0, asset.stderr
    assert f"no route takes asset.overdue in the routes this command reads ({routes})" in asset.stdout
    assert "will go dead again" in asset.stdout
    expense = cli("retry", str(ids["dead"]), "--reason", "try again", env=env)
    assert expense.returncode == 0 and "no route takes" not in expense.stdout, expense.stdout
