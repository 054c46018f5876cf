"""The Odoo addons' own tests, run by real Odoo 18 against the test PostgreSQL, with a real
receiver from the library on loopback for the far side.

Odoo is found through ODOO_PATH (default ~/odoo18: a tree with odoo-bin and a virtual environment
at .venv holding its requirements). Without it these tests are skipped, saying so on one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from .helpers import PRIMARY_SECRET, free_port, receiver_process, wait_until
from .otlp_sink import OtlpSink, tree
from .sinks import HttpSink
from .test_router_processes import ROUTES, router_process
from .test_tracing import stop

REPO = Path(__file__).resolve().parent.parent
ODOO_PATH = Path(os.environ.get("ODOO_PATH", "~/odoo18")).expanduser()
ODOO_PYTHON = ODOO_PATH / ".venv" / "bin" / "python"
ADDONS = ("ipai_enterprise_bridge", "ipai_finance_ppm")
ODOO_ROLE, ODOO_ROLE_PASSWORD = "ipai_odoo_test", "ipai-odoo-test-password"
SUMMARY = re.compile(r"(\d+) failed, (\d+) error\(s\) of (\d+) tests")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ODOO_PATH / "odoo-bin").exists() or not ODOO_PYTHON.exists(),
        reason=f"Odoo 18 not found at {ODOO_PATH} (odoo-bin and .venv): addon "
        "tests skipped; set ODOO_PATH",
    ),
]


@pytest.fixture(scope="module")
def odoo_ready():
    """The library is a distribution in Odoo's environment (its manifests name it), installed
    under a lock: two test runs at once share that environment. Each run's Odoo still imports
    its own checkout first, through odoo_env()'s PYTHONPATH."""
    with open(ODOO_PATH / ".venv" / ".ipai-bus-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [str(ODOO_PYTHON), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]


def odoo_env(extra: dict | None = None) -> dict[str, str]:
    """The environment Odoo runs in: this checkout's library first on its path."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


@contextlib.contextmanager
def fresh_odoo_database(server_url: str, *names: str) -> Iterator[dict]:
    """Connection options for a new Odoo database, owned by a role that is not 'postgres';
    it, and the databases ``names`` made from it, are dropped afterwards."""
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("select 1 from pg_roles where rolname = %s", (ODOO_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(f"create role {ODOO_ROLE} login createdb password %s", (ODOO_ROLE_PASSWORD,))
    conn.close()
    parts = urlsplit(server_url)
    name = f"ipai_odoo_{uuid.uuid4().hex[:8]}"
    try:
        yield {"name": name, "host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432)}
    finally:
        # Dropped by their owner, the Odoo role: DATABASE_URL's role may not be a superuser.
        conn = psycopg2.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            dbname=parts.path.lstrip("/") or "postgres",
            user=ODOO_ROLE,
            password=ODOO_ROLE_PASSWORD,
        )
        conn.autocommit = True
        with conn.cursor() as cursor:
            for dropped in (name, *(f"{name}{suffix}" for suffix in names)):
                cursor.execute(f'drop database if exists "{dropped}" with (force)')
        conn.close()


@pytest.fixture(scope="module")
def odoo_database(server_url):
    """The module's Odoo database (the first test installs the addons in it), and its twin."""
    with fresh_odoo_database(server_url, "_twin") as database:
        yield database


def odoo_command(
    database: dict,
    subcommand: str,
    *options: str,
    python: Path = ODOO_PYTHON,
    addons: tuple[Path, ...] = (ODOO_PATH / "addons", REPO / "addons"),
) -> list[str]:
    """odoo-bin SUBCOMMAND on ``database`` as the test role, with these addons paths."""
    return [
        str(python),
        str(ODOO_PATH / "odoo-bin"),
        subcommand,
        f"--addons-path={','.join(map(str, addons))}",
        "-d",
        database["name"],
        "--db_host",
        database["host"],
        "--db_port",
        database["port"],
        "--db_user",
        ODOO_ROLE,
        "--db_password",
        ODOO_ROLE_PASSWORD,
        *options,
    ]


def odoo_bin(
    database: dict,
    *args: str,
    env: dict | None = None,
    stdin: str | None = None,
    timeout: int = 1800,
    addons: tuple[Path, ...] = (ODOO_PATH / "addons", REPO / "addons"),
) -> subprocess.CompletedProcess:
    command = odoo_command(database, *args, addons=addons)
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=odoo_env(env),
        cwd=ODOO_PATH,
    )


def test_addon_tests_pass_on_odoo_18(odoo_ready, odoo_database, bus_url, tmp_path):
    with receiver_process(bus_url, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        env = {
            "IPAI_TEST_RECEIVER_URL": receiver.base_url + "/functions/v1/odoo-webhook",
            "IPAI_TEST_WEBHOOK_SECRET": PRIMARY_SECRET,
            "IPAI_TEST_BUS_DATABASE_URL": bus_url,
        }
        result = odoo_bin(
            odoo_database,
            "server",
            "-i",
            ",".join(ADDONS),
            "--without-demo=all",
            "--test-enable",
            "--test-tags",
            ",".join(f"/{addon}" for addon in ADDONS),
            "--stop-after-init",
            "--log-level=test",
            "--max-cron-threads=0",
            # a port of its own: two test runs at once must not meet on 8069
            f"--http-port={free_port()}",
            f"--gevent-port={free_port()}",
            env=env,
        )
    output = result.stdout + result.stderr
    (tmp_path / "odoo.log").write_text(output)
    summaries = SUMMARY.findall(output)
    assert summaries, f"Odoo ran no test (exit {result.returncode}):\n{output[-5000:]}"
    failed, errors, run = (int(value) for value in summaries[-1])
    print(f"\nOdoo 18 at {ODOO_PATH}: {failed} failed, {errors} error(s) of {run} tests")
    assert (failed, errors) == (0, 0), "\n".join(
        line for line in output.splitlines() if " ERROR " in line or "FAIL" in line
    )[-8000:]
    assert run >= 20 and result.returncode == 0
    assert "no live receiver" not in output, "the tests that need the receiver were skipped"


def test_configure_script_sets_the_parameters_odoo_reads(odoo_ready, odoo_database, tmp_path):
    """scripts/integration/configure-odoo-params.sh against the installed addon's database."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("an-odoo-webhook-secret-for-tests\n")
    url = (
        f"postgresql://{ODOO_ROLE}:{ODOO_ROLE_PASSWORD}@{odoo_database['host']}:"
        f"{odoo_database['port']}/{odoo_database['name']}"
    )
    script = REPO / "scripts" / "integration" / "configure-odoo-params.sh"
    result = subprocess.run(
        [
            str(script),
            "--database",
            url,
            "--url",
            "https://bus.example.ph/functions/v1/odoo-webhook",
            "--secret-file",
            str(secret_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    check = (
        "params = env['ir.config_parameter'].sudo()\n"
        "print('URL', params.get_param('ipai.webhook.url'))\n"
        "print('SECRET-OK', params.get_param('ipai.webhook.secret') == "
        "'an-odoo-webhook-secret-for-tests')\n"
    )
    shown = odoo_bin(odoo_database, "shell", "--no-http", stdin=check)
    assert "URL https://bus.example.ph/functions/v1/odoo-webhook" in shown.stdout, shown.stderr
    assert "SECRET-OK True" in shown.stdout


# One booking through the given steps, dispatched after each: what Odoo queued, and the source.
BOOKING_SCRIPT = """
import json
from datetime import datetime
params = env['ir.config_parameter'].sudo()
outbox = env['ipai.event.outbox']
booking = env['ipai.equipment.booking'].search([('equipment_id.name', '=', %(name)r)], limit=1)
if not booking:
    equipment = env['maintenance.equipment'].create({'name': %(name)r})
    booking = env['ipai.equipment.booking'].create({'equipment_id': equipment.id,
        'date_from': datetime(2026, 6, 1, 1), 'date_to': datetime(2026, 6, 1, 9)})
for step, url in %(steps)r:
    params.set_param('ipai.webhook.url', url)
    params.set_param('ipai.webhook.secret', %(secret)r)
    getattr(booking, step)()
    env.cr.commit()
    if 'ipai.bus.link' in env:  # 18.0.1.3.0 on: the probe is due
        env['ipai.bus.link']._current().next_probe_at = False
    outbox._cron_dispatch_events()
    env.cr.commit()
rows = outbox.search([('res_model', '=', 'ipai.equipment.booking'), ('res_id', '=', booking.id)],
                     order='id')
print('RESULT', json.dumps({'source': outbox._ipai_source(), 'booking': booking.id,
    'equipment': booking.equipment_id.id,
    'events': [(r.event_type, r.state, r.idempotency_key,
                'bus_key' in r._fields and r.bus_key or None) for r in rows]}))
"""


def book(database: dict, name: str, steps: list[tuple[str, str]], *, then: str = "", **options) -> dict:
    """Run BOOKING_SCRIPT on ``database``: (booking action, webhook URL) per step; ``then`` is
    more Python to run after it."""
    script = BOOKING_SCRIPT % {"name": name, "steps": steps, "secret": PRIMARY_SECRET} + then
    result = odoo_bin(database, "shell", "--no-http", stdin=script, **options)
    found = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert found, (result.stdout + result.stderr)[-5000:]
    return json.loads(found[-1][len("RESULT ") :])


def stored_at_bus(bus_url: str, keys: list[str]) -> list[tuple[str, str, str]]:
    """(source, aggregate_id, idempotency_key) of these keys at the bus, in the bus's order."""
    conn = psycopg2.connect(bus_url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select source, aggregate_id, idempotency_key from integration.outbox"
            " where idempotency_key = any(%s) order by seq",
            (keys,),
        )
        rows = cursor.fetchall()
    conn.close()
    return rows


def duplicate_database(database: dict, copy: str) -> None:
    """What Odoo's database manager's Duplicate does (a copy gets a database.uuid of its own)."""
    script = (
        "import sys, odoo\n"
        "odoo.tools.config.parse_config(sys.argv[1:])\n"
        "from odoo.service import db\n"
        f"db.exp_duplicate_database({database['name']!r}, {copy!r})\n"
    )
    options = odoo_command(database, "server")[3:]  # the connection and addons options
    result = subprocess.run(
        [str(ODOO_PYTHON), "-c", script, *options],
        capture_output=True,
        text=True,
        timeout=600,
        env=odoo_env(),
        cwd=ODOO_PATH,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def test_two_databases_with_default_settings_share_a_bus_and_lose_nothing(
    odoo_ready, odoo_database, bus_url, tmp_path
):
    """A database and its duplicate, both on default settings: the same booking id and
    equipment id in each, and each event arrives once, under its own database's source."""
    twin = {**odoo_database, "name": odoo_database["name"] + "_twin"}
    duplicate_database(odoo_database, twin["name"])
    with receiver_process(bus_url, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        url = receiver.base_url + "/functions/v1/odoo-webhook"
        steps = [("action_reserve_asset", url), ("action_checkout_asset", url)]
        first, second = (book(database, "Shared projector", steps) for database in (odoo_database, twin))
    assert (first["booking"], first["equipment"]) == (second["booking"], second["equipment"])
    assert first["source"] != second["source"]
    assert all(s.startswith("odoo-") and len(s) == 41 for s in (first["source"], second["source"]))
    for sent in (first, second):
        assert [state for _, state, _, _ in sent["events"]] == ["sent", "sent"], sent
    keys = [key for sent in (first, second) for *_, key in sent["events"]]
    stored = stored_at_bus(bus_url, keys)
    assert len(stored) == 4 and len({row[2] for row in stored}) == 4, "each once, none merged"
    assert {(row[0], row[1]) for row in stored} == {
        (first["source"], str(first["equipment"])),
        (second["source"], str(second["equipment"])),
    }


# The last commit of release 18.0.1.2.0, which sent under the database's name by default.
PREVIOUS_RELEASE = "c90810cec6837a47c0891e26b2c3de09d5668223"


def test_an_upgrade_from_the_previous_release_keeps_the_source_it_sent_under(
    odoo_ready, server_url, bus_url, tmp_path
):
    """Installed with 18.0.1.2.0, one event sent and one left queued by an outage; upgraded:
    the queued one goes out under its old key, the next under a scoped one, all three under
    the source the database has always used, in order."""
    previous = tmp_path / "previous"
    previous.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "addons/ipai_enterprise_bridge"],
        capture_output=True,
        timeout=60,
    )
    if archive.returncode != 0:
        pytest.skip(f"release {PREVIOUS_RELEASE} not in this clone's history: upgrade not tried")
    subprocess.run(["tar", "-x", "-C", str(previous)], input=archive.stdout, check=True)
    old_addons = (ODOO_PATH / "addons", previous / "addons")
    with fresh_odoo_database(server_url) as database:
        installed = odoo_bin(
            database,
            "server",
            "-i",
            "ipai_enterprise_bridge",
            "--without-demo=all",
            "--stop-after-init",
            "--log-level=warn",
            addons=old_addons,
        )
        assert installed.returncode == 0, installed.stderr[-5000:]
        with receiver_process(bus_url, tmp_path, secrets=PRIMARY_SECRET) as receiver:
            url = receiver.base_url + "/functions/v1/odoo-webhook"
            down = f"http://127.0.0.1:{free_port()}/functions/v1/odoo-webhook"
            before = book(
                database,
                "Upgraded projector",
                [("action_reserve_asset", url), ("action_checkout_asset", down)],
                addons=old_addons,
            )
            upgraded = odoo_bin(database, "server", "-u", "ipai_enterprise_bridge", "--stop-after-init")
            assert upgraded.returncode == 0, upgraded.stderr[-5000:]
            after = book(database, "Upgraded projector", [("action_checkin_asset", url)])
    assert before["source"] == database["name"], "18.0.1.2.0 sent under the database's name"
    assert after["source"] == before["source"], "the upgrade keeps it"
    reserved, checked_out, checked_in = after["events"]
    assert [event[1] for event in after["events"]] == ["sent"] * 3
    assert reserved[3] is None and checked_out[3] is None, "queued before: their own keys"
    assert checked_in[3] == checked_in[2] + "@" + checked_in[3].rsplit("@", 1)[1]
    keys = [reserved[2], checked_out[2], checked_in[3]]
    stored = stored_at_bus(bus_url, keys)
    assert [row[2] for row in stored] == keys, "each once, in order"
    assert {row[0] for row in stored} == {before["source"]}


@pytest.fixture(scope="module")
def odoo_with_opentelemetry(odoo_ready):
    """The otel extra in Odoo's environment (what an admin who wants traces installs)."""
    with open(ODOO_PATH / ".venv" / ".ipai-bus-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [str(ODOO_PYTHON), "-m", "pip", "install", "--quiet", *OTEL_EXTRA],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if result.returncode != 0:
        pytest.skip(
            f"OpenTelemetry could not be installed in Odoo's environment: Odoo trace test skipped ({result.stderr[-200:]})"
        )


OTEL_EXTRA = ("opentelemetry-sdk>=1.20", "opentelemetry-exporter-otlp-proto-http>=1.20")


def test_a_booking_in_odoo_starts_one_trace_that_ends_at_the_destination(
    odoo_with_opentelemetry, odoo_database, clean_bus, tmp_path, monkeypatch
):
    """Odoo's dispatcher, the receiver and the router each export their spans by OTLP: the
    destination's traceparent belongs to a trace rooted at Odoo's send."""
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    with OtlpSink() as otlp, HttpSink() as sink:
        exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        for name, value in exporting.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        with receiver_process(clean_bus, tmp_path, secrets=PRIMARY_SECRET) as receiver:
            router = router_process(clean_bus, routes, sink.url, tmp_path / "router.log")
            try:
                url = receiver.base_url + "/functions/v1/odoo-webhook"
                booked = book(
                    odoo_database,
                    "Traced projector",
                    [("action_reserve_asset", url)],
                    then="from ipai_bus_lib.core import tracing\ntracing.flush()\n",
                    env=exporting,
                )
                assert [event[1] for event in booked["events"]][-1:] == ["sent"], booked
                wait_until(lambda: sink.count() >= 1, what="the booking's delivery")
            finally:
                stop(router)
        traceparent = sink.received[0].headers["traceparent"]
        wait_until(lambda: len(otlp.trace(traceparent[3:35])) >= 5, timeout=30, what="the spans")
    spans = otlp.trace(traceparent[3:35])
    print("\nOdoo booking:\n" + tree(spans))
    by_id = {span.span_id: span for span in spans}
    (send,) = [s for s in spans if s.name == "send ipai.bus" and s.service == "odoo"]
    assert send.parent_id == "" and send.attributes["messaging.batch.message_count"] >= 1
    post = by_id[traceparent[36:52]]
    assert (post.name, post.service) == ("POST", "ipai-bus-router")
    process = by_id[post.parent_id]
    create = by_id[process.parent_id]
    assert (process.name, create.name, create.service) == ("process ipai.bus", "create ipai.bus", "odoo")
    assert create.parent_id == send.span_id, "one connected trace from Odoo's dispatch"
    assert any(s.name == "receive ipai.bus" and s.parent_id == send.span_id for s in spans)


def test_addons_uninstall_cleanly_and_take_their_parameters(odoo_ready, odoo_database):
    """Tables go, and so does every system parameter the bridge keeps: the secret first."""
    keys = [
        "ipai.webhook.url",
        "ipai.webhook.secret",
        "ipai.webhook.source",
        "ipai.outbox.retention_days",
        "ipai.booking.early_checkout_minutes",
        "ipai_enterprise_bridge.paid_history_until",
    ]
    script = (
        "params = env['ir.config_parameter'].sudo()\n"
        "for key in %r:\n"
        "    params.set_param(key, 'set-before-uninstall')\n"
        "params.set_param('web.base.url.test', 'kept')\n"
        "env.cr.commit()\n"
        "modules = env['ir.module.module'].search([('name', 'in', %r)])\n"
        "modules.button_immediate_uninstall()\n"
        "env.cr.execute(\"select to_regclass('ipai_event_outbox'),"
        " to_regclass('ipai_equipment_booking'), to_regclass('ipai_bir_form'),"
        " to_regclass('ipai_logframe')\")\n"
        "print('LEFT', env.cr.fetchone())\n"
        "env.cr.execute(\"select key from ir_config_parameter where key like 'ipai%%'"
        " or key = 'web.base.url.test' order by key\")\n"
        "print('PARAMETERS', [row[0] for row in env.cr.fetchall()])\n" % (keys, list(ADDONS))
    )
    result = odoo_bin(odoo_database, "shell", "--no-http", stdin=script)
    output = (result.stdout + result.stderr)[-5000:]
    assert "LEFT (None, None, None, None)" in result.stdout, output
    assert "PARAMETERS ['web.base.url.test']" in result.stdout, output
