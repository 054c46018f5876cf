"""The integration scripts, run for real: against the receiver on loopback and a database with
Odoo's ir_config_parameter table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from .helpers import PRIMARY_SECRET, counts, receiver_process

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "integration"
# The table as Odoo 18 creates it (odoo/addons/base/models/ir_config_parameter.py), and the
# cache-signalling sequence its registry reads.
ODOO_CONFIG_TABLE = """
create table ir_config_parameter (
    id serial primary key, key varchar not null, value text not null,
    create_uid integer, create_date timestamp, write_uid integer, write_date timestamp,
    constraint ir_config_parameter_key_uniq unique (key));
create sequence base_cache_signaling_default;
"""


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture()
def odoo_like_database(make_database):
    url = make_database()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute(ODOO_CONFIG_TABLE)
    conn.close()
    return url


def parameters(url: str) -> dict[str, str]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute("select key, value from ir_config_parameter order by key")
        found = dict(cursor.fetchall())
    conn.close()
    return found


def test_expense_flow_script_passes_against_a_running_receiver(clean_bus, tmp_path):
    with receiver_process(clean_bus, tmp_path) as receiver:
        result = run(
            "test-expense-flow.sh",
            receiver.base_url + "/functions/v1/odoo-webhook",
            env={"DATABASE_URL": clean_bus, "IPAI_WEBHOOK_SECRET": PRIMARY_SECRET},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test-expense-flow: OK" in result.stdout
    assert counts(clean_bus) == (1, 1)
    assert PRIMARY_SECRET not in result.stdout + result.stderr


def test_expense_flow_script_fails_with_a_wrong_secret(clean_bus, tmp_path):
    with receiver_process(clean_bus, tmp_path) as receiver:
        result = run(
            "test-expense-flow.sh",
            receiver.base_url + "/functions/v1/odoo-webhook",
            env={"DATABASE_URL": clean_bus, "IPAI_WEBHOOK_SECRET": "not-the-receivers-secret"},
        )
    assert result.returncode == 1
    assert "receiver answered HTTP 401" in result.stderr and "invalid signature" in result.stderr
    assert counts(clean_bus) == (0, 0)


def test_expense_flow_script_fails_without_a_receiver(clean_bus):
    result = run(
        "test-expense-flow.sh",
        "http://127.0.0.1:1/functions/v1/odoo-webhook",
        env={"DATABASE_URL": clean_bus, "IPAI_WEBHOOK_SECRET": PRIMARY_SECRET},
    )
    assert result.returncode == 1 and "no receiver at" in result.stderr


def test_configure_odoo_params_sets_both_and_is_idempotent(odoo_like_database, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-webhook-secret-for-odoo-tests\n")
    arguments = (
        "--database",
        odoo_like_database,
        "--url",
        "https://bus.example.ph/functions/v1/odoo-webhook",
        "--secret-file",
        str(secret_file),
    )
    for _ in range(2):
        result = run("configure-odoo-params.sh", *arguments, env={})
        assert result.returncode == 0, result.stderr
        assert "a-webhook-secret" not in result.stdout + result.stderr, "the secret was echoed"
    assert parameters(odoo_like_database) == {
        "ipai.webhook.secret": "a-webhook-secret-for-odoo-tests",
        "ipai.webhook.url": "https://bus.example.ph/functions/v1/odoo-webhook",
    }


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (
            ("--url", "ftp://bus.example.ph"),
            {"IPAI_WEBHOOK_SECRET": "sixteen-chars-or-more"},
            "must be an http(s) URL",
        ),
        (("--url", "https://bus.example.ph/hook"), {"IPAI_WEBHOOK_SECRET": "short"}, "at least 16"),
        (("--url", "https://bus.example.ph/hook"), {}, "no secret"),
        (("--bogus",), {}, "unknown argument"),
    ],
)
def test_configure_odoo_params_refuses_bad_input_and_changes_nothing(
    odoo_like_database, arguments, env, message
):
    result = run(
        "configure-odoo-params.sh",
        "--database",
        odoo_like_database,
        *arguments,
        env={"IPAI_WEBHOOK_SECRET": "", "IPAI_WEBHOOK_SECRET_FILE": "", **env},
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert parameters(odoo_like_database) == {}


def test_configure_odoo_params_refuses_a_database_without_odoo(make_database):
    result = run(
        "configure-odoo-params.sh",
        "--database",
        make_database(),
        "--url",
        "https://bus.example.ph/hook",
        env={"IPAI_WEBHOOK_SECRET": "sixteen-chars-or-more"},
    )
    assert result.returncode != 0 and "no ir_config_parameter table" in result.stderr


def test_each_addons_readme_rst_is_made_from_its_fragments():
    """README.rst is generated (scripts/addon_readme.py); a fragment edited without it fails."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "addon_readme.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expense_flow_script_finds_the_receiver_at_ipai_receiver_port(clean_bus, tmp_path):
    with receiver_process(clean_bus, tmp_path) as receiver:
        port = receiver.base_url.rsplit(":", 1)[1]
        env = {
            "DATABASE_URL": clean_bus,
            "IPAI_WEBHOOK_SECRET": PRIMARY_SECRET,
            "IPAI_RECEIVER_PORT": port,
        }
        result = run("test-expense-flow.sh", env={**env, "IPAI_WEBHOOK_URL": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(clean_bus) == (1, 1)


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (
            "configure-odoo-params.sh",
            ("Needs psql", "~/.config/ipai-bus/webhook-secret", "--secret-file"),
        ),
        ("test-expense-flow.sh", ("openssl, curl and psql", "IPAI_RECEIVER_PORT", "DATABASE_URL")),
    ],
)
def test_scripts_help_says_what_they_need_and_exits_0(script, says):
    shown = run(script, "--help", env={})
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout.startswith(f"Usage: {script}") and all(part in shown.stdout for part in says)
    assert "set -euo" not in shown.stdout, "the help is text, not a line of the script"


def test_configure_odoo_params_refuses_an_unknown_argument_with_its_usage():
    refused = run("configure-odoo-params.sh", "--bogus", env={})
    assert refused.returncode == 2 and "unknown argument --bogus" in refused.stderr
    assert "Usage: configure-odoo-params.sh" in refused.stderr and refused.stdout == ""
