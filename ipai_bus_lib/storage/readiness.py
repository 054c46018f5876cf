"""Is a database ready for the bus: does it answer, and has it every migration this code needs.

The receiver and the router answer ``/readyz`` with it; `ipai-bus route` refuses a stale schema.
"""

from __future__ import annotations

from typing import Any

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
