"""The wire contract is written once (ipai_bus_lib/core/wire_contract.json): the migrated schema's
domains and function defaults agree with it, and no other source writes its numbers again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipai_bus_lib.core import contract

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = contract.load()


def domain_checks(conn) -> dict[str, str]:
    """Each integration domain's CHECK constraints, as PostgreSQL prints them."""
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select t.typname, string_agg(pg_get_constraintdef(c.oid), ' and ')"
            "  from pg_type t join pg_namespace n on n.oid = t.typnamespace"
            "  join pg_constraint c on c.contypid = t.oid"
            " where n.nspname = 'integration' and t.typtype = 'd' group by t.typname"
        )
        return dict(cursor.fetchall())


def function_text(conn, name: str) -> tuple[str, str]:
    """(arguments with their defaults, whole definition) of integration.<name>."""
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select pg_get_function_arguments(p.oid), pg_get_functiondef(p.oid)"
            "  from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'integration' and p.proname = %s",
            (name,),
        )
        rows = cursor.fetchall()
    assert len(rows) == 1, f"integration.{name}: {len(rows)} definitions"
    return rows[0]


def default_of(arguments: str, parameter: str) -> str:
    match = re.search(rf"\b{parameter} [a-z\[\] ]+? DEFAULT (ARRAY\[[^\]]*\]|[^,]+)", arguments)
    assert match, f"{parameter} has no default in ({arguments})"
    return match.group(1).strip()


def sql_literal(pattern: str) -> str:
    return "'" + pattern.replace("'", "''") + "'::text"


def test_the_domains_hold_the_contract_patterns_and_lengths(conn):
    checks = domain_checks(conn)
    envelope = CONTRACT["envelope"]
    assert sql_literal(envelope["event_type_pattern"]) in checks["event_type_name"]
    assert sql_literal(envelope["source_pattern"]) in checks["source_name"]
    assert sql_literal(envelope["idempotency_key_pattern"]) in checks["idempotency_key_text"]
    longest = envelope["max_text_length"]
    for domain in ("aggregate_id_text", "aggregate_type_name", "event_type_name"):
        assert f"length(VALUE) <= {longest}" in checks[domain], domain


def test_the_functions_check_keys_with_the_contract_pattern(conn):
    pattern = CONTRACT["envelope"]["idempotency_key_pattern"]
    for name in ("insert_outbox_event", "insert_outbox_batch"):
        _, definition = function_text(conn, name)
        assert f"~ '{pattern}'" in definition, name


def test_the_functions_default_to_the_contract_delivery_policy(conn):
    delivery = CONTRACT["delivery"]
    delays = "ARRAY[" + ", ".join(map(str, delivery["retry_delays_seconds"])) + "]"
    assert default_of(function_text(conn, "fail_outbox")[0], "p_retry_delay_seconds") == delays
    for name in ("claim_outbox", "extend_leases"):
        lease = default_of(function_text(conn, name)[0], "p_lease_seconds")
        assert lease == str(delivery["lease_seconds"]), name
    for name in ("insert_outbox_event", "insert_outbox_batch"):
        attempts = default_of(function_text(conn, name)[0], "p_max_attempts")
        assert attempts == str(delivery["max_attempts"]), name
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "select column_default from information_schema.columns"
            " where table_schema = 'integration' and table_name = 'outbox'"
            "   and column_name = 'max_attempts'"
        )
        assert cursor.fetchone()[0] == str(delivery["max_attempts"])


# Literal forms of the contract's rules that only wire_contract.json may hold.
WRITTEN_AGAIN = {
    "a pattern": re.compile(r"\[A-Za-z0-9_\.-\]\{1,64\}|\[a-z\]\[a-z0-9_\]\*|x20-\\x7e|\[ -~\]"),
    "a size": re.compile(r"256 \* 1024|4 \* 1024 \* 1024|\b262144\b|\b4194304\b"),
    "the secret length": re.compile(r"(?<![\w.])16 characters|len\(\w+\) < 16\b|length < 16\b"),
    "the retry schedule": re.compile(r"\(30, 90, 300\)|\[30, 90, 300\]"),
    "a header name": re.compile(r"[\"']x-(ipai-timestamp|ipai-signature|idempotency-key)[\"']"),
}


def contract_readers() -> list[Path]:
    library = [path for path in (ROOT / "ipai_bus_lib").rglob("*.py")]
    addons = [path for path in (ROOT / "addons").rglob("*.py") if "tests" not in path.parts]
    return [*library, *addons, ROOT / "supabase" / "functions" / "odoo-webhook" / "handler.ts"]


@pytest.mark.parametrize("rule", sorted(WRITTEN_AGAIN))
def test_no_reader_writes_a_contract_rule_again(rule):
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in contract_readers()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if WRITTEN_AGAIN[rule].search(line) and not line.lstrip().startswith(("#", "//", "-- "))
    ]
    assert not found, f"{rule} of the wire contract written outside wire_contract.json:\n" + "\n".join(
        found
    )


def test_the_edge_function_imports_the_contract_file():
    handler = (ROOT / "supabase" / "functions" / "odoo-webhook" / "handler.ts").read_text()
    assert '"../../../ipai_bus_lib/core/wire_contract.json" with { type: "json" }' in handler
