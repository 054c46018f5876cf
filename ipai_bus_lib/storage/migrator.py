"""The migration runner: applies supabase/migrations/*.sql in order, once each, and records them.

On a plain PostgreSQL it first creates the Supabase roles the schema grants to (anon,
authenticated, service_role). Running it twice is a no-op; a migration edited after it was applied
is refused, because the database would no longer match the file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from ..core.errors import MigrationError
from .db import connect, translate_error
from .queries import load

if TYPE_CHECKING:
    from importlib.abc import Traversable

SUPABASE_ROLES = ("anon", "authenticated", "service_role")
_MIGRATION_LOCK_KEY = 0x1BA1_B05
_FILE_NAME = re.compile(r"^(\d{14})_([a-z0-9_]+)\.sql$")

SQL = load("migrator")


@dataclass(frozen=True)
class Migration:
    """One migration file: its version (timestamp prefix), name, SQL and checksum."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_directory() -> Traversable:
    """Where the migrations are: inside an installed wheel, ipai_bus_lib/migrations (the build
    copies supabase/migrations there); in a source checkout, supabase/migrations itself, which
    holds nothing else (the Supabase CLI reads it too)."""
    shipped = resources.files("ipai_bus_lib") / "migrations"
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[2] / "supabase" / "migrations"


def available_migrations() -> list[Migration]:
    """The migrations shipped with the library, oldest first."""
    found = []
    for entry in migrations_directory().iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda migration: migration.version)


def migrate(dsn: str) -> list[str]:
    """Apply every migration not yet applied; returns the versions applied now (maybe none).

    Raises MigrationError naming the file when one fails or was edited after it was applied, and
    DatabaseUnavailable when the database cannot be reached.
    """
    conn = connect(dsn, application_name="ipai-bus migrate")
    try:  # the advisory lock is the session's: closing the connection releases it
        return _migrate(conn)
    finally:
        conn.close()


def _migrate(conn: Any) -> list[str]:
    applied_now = []
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(SQL["lock"], {"key": _MIGRATION_LOCK_KEY})
        ensure_supabase_roles(conn)
        with conn, conn.cursor() as cursor:
            cursor.execute(SQL["create_ledger"])
        recorded = _recorded_checksums(conn)
        for migration in available_migrations():
            if _already_applied(migration, recorded):
                continue
            _apply(conn, migration)
            applied_now.append(migration.version)
        return applied_now
    except psycopg2.Error as exc:
        raise translate_error(exc) from exc


def ensure_supabase_roles(conn: Any) -> None:
    """Create anon, authenticated and service_role when missing (a plain PostgreSQL)."""
    with conn, conn.cursor() as cursor:
        for role in SUPABASE_ROLES:
            cursor.execute(SQL["role_exists"], {"role": role})
            if cursor.fetchone() is None:
                # Roles are cluster-wide: another database's runner may create it first.
                cursor.execute(SQL["savepoint"])
                try:
                    cursor.execute(sql.SQL(SQL["create_nologin_role"]).format(role=sql.Identifier(role)))
                except (psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
                    cursor.execute(SQL["rollback_to_savepoint"])


def _recorded_checksums(conn: Any) -> dict[str, str]:
    with conn, conn.cursor() as cursor:
        cursor.execute(SQL["recorded_checksums"])
        recorded = dict(cursor.fetchall())
        cursor.execute(SQL["has_supabase_ledger"])  # applied by `supabase db push` instead
        if cursor.fetchone()[0]:
            cursor.execute(SQL["supabase_versions"])
            for (version,) in cursor.fetchall():
                recorded.setdefault(version, "")
    return recorded


def _already_applied(migration: Migration, recorded: dict[str, str]) -> bool:
    if migration.version not in recorded:
        return False
    checksum = recorded[migration.version]
    if checksum and checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version}_{migration.name}.sql was edited after it was applied; "
            "restore the file as it landed and put the change in a new migration"
        )
    return True


def _apply(conn: Any, migration: Migration) -> None:
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(migration.sql)
            cursor.execute(
                SQL["record_migration"],
                {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
            )
    except psycopg2.Error as exc:
        raise MigrationError(
            f"migration {migration.version}_{migration.name}.sql failed: "
            f"{translate_error(exc)}; nothing of it was applied",
            sqlstate=getattr(exc, "pgcode", None),
        ) from exc
