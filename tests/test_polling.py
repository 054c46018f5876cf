"""The README's polling pattern, run exactly as written, as service_role, on a real database."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg2
import pytest

from ipai_bus_lib.core.envelope import Envelope

from . import helpers

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_statements() -> list[str]:
    """The SQL block between the polling-sql markers, one statement each, comments dropped."""
    text = README.read_text()
    block = text[text.index("<!-- polling-sql -->") : text.index("<!-- /polling-sql -->")]
    sql = block.split("```sql", 1)[1].rsplit("```", 1)[0]
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


def with_ids(statement: str, ids: list[uuid.UUID]) -> str:
    """Each '<id>' placeholder in turn replaced by the next of ``ids``."""
    chosen = iter(ids)
    return re.sub(r"<id>", lambda _: str(next(chosen)), statement)


@pytest.fixture
def as_service_role(clean_bus):
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("set role service_role")
    yield conn
    conn.close()


def add(clean_bus: str, record: str, count: int) -> list[uuid.UUID]:
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            return [
                helpers.insert_event(
                    cursor,
                    Envelope("expense.submitted", "hr.expense", record, {"expense_id": number}),
                    idempotency_key=str(uuid.uuid4()),
                ).event_id
                for number in range(count)
            ]
    finally:
        conn.close()


def status(conn, event_id: uuid.UUID) -> tuple:
    with conn.cursor() as cursor:
        cursor.execute("reset role")
        cursor.execute(
            "select status, attempts, last_error from integration.event_state where id = %s",
            (event_id,),
        )
        row = cursor.fetchone()
        cursor.execute("set role service_role")
    return row


def test_the_readme_polling_statements_do_what_the_readme_says(clean_bus, as_service_role):
    claim, extend, ack, fail = readme_statements()
    first_of_7, second_of_7 = add(clean_bus, "7", 2)
    only_of_8 = add(clean_bus, "8", 1)[0]
    only_of_9 = add(clean_bus, "9", 1)[0]
    with as_service_role.cursor() as cursor:
        cursor.execute(claim)
        claimed = [row[0] for row in cursor.fetchall()]
        # One event per record per claim: record 7's second waits for its first.
        assert sorted(map(str, claimed)) == sorted(map(str, (first_of_7, only_of_8, only_of_9)))
        cursor.execute(claim)
        assert cursor.fetchall() == [], "nothing more is due while the first of 7 is held"

        cursor.execute(with_ids(extend, [first_of_7]))
        assert cursor.fetchone() == (1,)

        cursor.execute(with_ids(ack.replace("n8n-poller-1", "another-name"), [first_of_7, only_of_8]))
        assert cursor.fetchone() == (0,), "another worker's name acknowledges nothing"
        cursor.execute(with_ids(ack, [first_of_7, only_of_8]))
        assert cursor.fetchone() == (2,)

        cursor.execute(with_ids(fail, [only_of_9]))
        assert cursor.fetchone() == ("failed",)

        cursor.execute(claim)
        assert [row[0] for row in cursor.fetchall()] == [second_of_7], "record 7's second, now"
    assert status(as_service_role, first_of_7)[0] == status(as_service_role, only_of_8)[0] == "completed"
    failed = status(as_service_role, only_of_9)
    assert failed[:2] == ("failed", 1) and failed[2] == "HTTP 502 from the expense handler"


def test_signed_in_users_cannot_poll(clean_bus):
    """anon and authenticated are refused the functions, and nothing is claimed."""
    [event_id] = add(clean_bus, "1", 1)
    claim = readme_statements()[0]
    conn = psycopg2.connect(clean_bus)
    conn.autocommit = True
    try:
        for role in ("anon", "authenticated"):
            with conn.cursor() as cursor:
                cursor.execute(f"set role {role}")
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cursor.execute(claim)
                cursor.execute("reset role")
        assert status_of(conn, event_id) == ("pending", 0)
    finally:
        conn.close()


def status_of(conn, event_id: uuid.UUID) -> tuple:
    with conn.cursor() as cursor:
        cursor.execute("select status, attempts from integration.event_state where id = %s", (event_id,))
        return cursor.fetchone()
