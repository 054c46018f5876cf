"""The Odoo addons' own tests, run by real Odoo 18 against the test PostgreSQL, with a real
receiver from the library on loopback for the far side.

Odoo is found through ODOO_PATH (default ~/odoo18: a tree with odoo-bin and a virtual environment
at .venv holding its requirements). Without it these tests are skipped, saying so on one line.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from .helpers import PRIMARY_SECRET, free_port, receiver_process

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


@pytest.fixture(scope="module")
def odoo_database(server_url):
    """Connection options for a fresh Odoo database, owned by a role that is not 'postgres'."""
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("select 1 from pg_roles where rolname = %s", (ODOO_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(f"create role {ODOO_ROLE} login createdb password %s", (ODOO_ROLE_PASSWORD,))
    conn.close()
    parts = urlsplit(server_url)
    name = f"ipai_odoo_{uuid.uuid4().hex[:8]}"
    yield {"name": name, "host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432)}
    # Dropped by its owner, the Odoo role: DATABASE_URL's role may not be a superuser.
    conn = psycopg2.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        dbname=parts.path.lstrip("/") or "postgres",
        user=ODOO_ROLE,
        password=ODOO_ROLE_PASSWORD,
    )
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'drop database if exists "{name}" with (force)')
    conn.close()


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
    database: dict, *args: str, env: dict | None = None, stdin: str | None = None, timeout: int = 1800
) -> subprocess.CompletedProcess:
    command = odoo_command(database, *args)
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
