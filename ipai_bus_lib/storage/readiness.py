"""Is a database ready for the bus: does it answer, and has it every migration this code needs.

The receiver and the router answer ``/readyz`` with it; `ipai-bus route` refuses a stale schema.
"""

from __future__ import annotations

from typing import Any

import psycopg2

from .db import connect, translate_error
from .migrator import available_migrations
from .queries import load

SQL = load("readiness")


def missing_migrations(cursor: Any) -> list[str]:
    """Versions this code ships that the database has not applied ([] when current).

    Reads ``public.applied_migrations()``, which even the least-privileged receiver may call;
    a database older than that function misses at least the migration that adds it.
    """
    cursor.execute(SQL["has_applied_migrations"])
    applied: set[str] = set()
    if cursor.fetchone()[0]:
        cursor.execute(SQL["applied_migrations"])
        applied = {row[0] for row in cursor.fetchall()}
    return [m.version for m in available_migrations() if m.version not in applied]


def pending_migrations(dsn: str) -> list[str]:
    """The versions not yet applied to the database at ``dsn`` (read only; [] when current)."""
    conn = connect(dsn, application_name="ipai-bus readiness")
    try:
        with conn, conn.cursor() as cursor:
            return missing_migrations(cursor)
    except psycopg2.Error as exc:
        raise translate_error(exc) from exc
    finally:
        conn.close()
