"""The migration runner and the embedded PostgreSQL default, on real servers."""

from __future__ import annotations

import os
import stat

import psycopg2
import psycopg2.errors
import pytest

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.errors import (
    DatabaseUnavailable,
    EmbeddedPostgresError,
    MigrationError,
)
from ipai_bus_lib.storage import migrator, outbox
from ipai_bus_lib.storage.embedded import EmbeddedPostgres

from . import helpers


def applied_versions(url: str) -> list[str]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("select version from integration.schema_migrations order by version")
            return [version for (version,) in cursor.fetchall()]
    finally:
        conn.close()


def test_migrate_applies_every_file_then_is_a_no_op(make_database):
    url = make_database()
    everything = [migration.version for migration in migrator.available_migrations()]
    assert migrator.migrate(url) == everything
    assert migrator.migrate(url) == [], "a second run must apply nothing"
    assert applied_versions(url) == everything


def test_migrate_creates_the_supabase_roles(make_database):
    url = make_database()
    migrator.migrate(url)
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select rolname from pg_roles where rolname in"
            " ('anon', 'authenticated', 'service_role') order by 1"
        )
        assert [name for (name,) in cursor.fetchall()] == ["anon", "authenticated", "service_role"]
    conn.close()


def test_migration_edited_after_it_was_applied_is_refused(make_database):
    url = make_database()
    migrator.migrate(url)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute("update integration.schema_migrations set checksum = 'edited'")
    conn.close()
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        migrator.migrate(url)


def test_migration_recorded_by_the_supabase_cli_is_not_applied_again(make_database):
    url = make_database()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "create schema supabase_migrations; create table"
            " supabase_migrations.schema_migrations (version text primary key)"
        )
        for migration in migrator.available_migrations():
            cursor.execute(
                "insert into supabase_migrations.schema_migrations values (%s)", (migration.version,)
            )
    conn.close()
    assert migrator.migrate(url) == []


def test_failing_migration_leaves_nothing_half_applied(make_database):
    url = make_database()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:  # a clash the migration cannot get past
        cursor.execute("create schema integration; create table integration.outbox (id int)")
    conn.close()
    with pytest.raises(MigrationError, match="20260122000100_integration_bus.sql failed"):
        migrator.migrate(url)
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select to_regclass('integration.event_log'), count(*) from integration.schema_migrations"
        )
        assert cursor.fetchone() == (None, 0)
    conn.close()


def test_an_install_with_events_upgrades_and_keeps_every_rule(make_database, monkeypatch):
    """A bus of the previous release, with events in every state, migrated forward: the keys and
    signatures it accepted still make resends duplicates and replays refusals, and the shape
    rules (now domains) still hold."""
    url = make_database()
    shipped = migrator.available_migrations()
    earlier = [m for m in shipped if m.version < "20260128000100"]
    monkeypatch.setattr(migrator, "available_migrations", lambda: earlier)
    migrator.migrate(url)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            stored = {}
            for key in ("old-pending", "old-completed", "old-dead"):
                helpers.insert_event(
                    cursor,
                    Envelope("expense.submitted", "hr.expense", key, {"amount": 1}),
                    idempotency_key=key,
                    signature_digest=f"digest-{key}",
                )
                cursor.execute("select id from integration.outbox where idempotency_key = %s", (key,))
                stored[key] = cursor.fetchone()[0]
            cursor.execute(
                "update integration.outbox set status = 'completed', completed_at = now()"
                " where idempotency_key = 'old-completed'"
            )
            cursor.execute(
                "update integration.outbox set status = 'dead' where idempotency_key = 'old-dead'"
            )

        monkeypatch.setattr(migrator, "available_migrations", lambda: shipped)
        applied = migrator.migrate(url)
        assert applied == [m.version for m in shipped if m.version >= "20260128000100"]

        with conn, conn.cursor() as cursor:
            for key, event_id in stored.items():
                again = helpers.insert_event(
                    cursor,
                    Envelope("expense.submitted", "hr.expense", key, {"amount": 1}),
                    idempotency_key=key,
                    signature_digest=f"digest-{key}",
                )
                assert (again.event_id, again.duplicate) == (event_id, True)
        with pytest.raises(psycopg2.Error) as replay, conn, conn.cursor() as cursor:
            helpers.insert_event(
                cursor,
                Envelope("expense.submitted", "hr.expense", "x", {"amount": 1}),
                idempotency_key="another-key",
                signature_digest="digest-old-pending",
            )
        assert replay.value.pgcode == "IB001", replay.value  # a replayed signature
        with pytest.raises(psycopg2.errors.CheckViolation), conn, conn.cursor() as cursor:
            cursor.execute("update integration.outbox set event_type = 'Not A Type'")
        with conn, conn.cursor() as cursor:
            cursor.execute("select status, count(*) from integration.outbox group by 1 order by 1")
            assert cursor.fetchall() == [("dead", 1), ("pending", 1)], "the completed one left"
            cursor.execute(
                "select status from integration.event_state where id = %s", (stored["old-completed"],)
            )
            assert cursor.fetchall() == [("completed",)], "its audit copy says what it was"
            claimed = outbox.claim(cursor, worker="after-upgrade", limit=10)
        assert [event.id for event in claimed] == [stored["old-pending"]]
    finally:
        conn.close()


def test_events_in_flight_at_the_upgrade_stay_with_their_worker(make_database, monkeypatch):
    """Claimed under the old claim (each row marked processing), they are in flight after the
    lease-set migration: same worker, same attempt, settled by that worker as before."""
    url = make_database()
    shipped = migrator.available_migrations()
    earlier = [m for m in shipped if m.version < "20261206000100"]
    monkeypatch.setattr(migrator, "available_migrations", lambda: earlier)
    migrator.migrate(url)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            for key in ("first", "retry", "waiting"):
                helpers.insert_event(
                    cursor,
                    Envelope("expense.submitted", "hr.expense", key, {"amount": 1}),
                    idempotency_key=key,
                )
            cursor.execute(
                "update integration.outbox set attempts = 1, status = 'failed'"
                " where idempotency_key = 'retry'"
            )
            cursor.execute("select id from integration.claim_outbox('old-router', 2, 60) order by seq")
            first, retry = (event_id for (event_id,) in cursor.fetchall())

        monkeypatch.setattr(migrator, "available_migrations", lambda: shipped)
        assert migrator.migrate(url) == [m.version for m in shipped if m.version >= "20261206000100"]

        with conn, conn.cursor() as cursor:
            cursor.execute(
                "select id, status, attempts, locked_by from integration.outbox_state"
                " where locked_by is not null order by seq"
            )
            assert cursor.fetchall() == [
                (first, "processing", 1, "old-router"),
                (retry, "processing", 2, "old-router"),
            ]
            assert [e.aggregate_id for e in outbox.claim(cursor, worker="new", limit=10)] == ["waiting"]
            assert outbox.ack(cursor, [first], worker="old-router") == 1
            assert outbox.fail(cursor, retry, worker="old-router", error="HTTP 502") == "failed"
            cursor.execute("select attempts from integration.outbox where id = %s", (retry,))
            assert cursor.fetchone() == (2,)
            cursor.execute("select worker from integration.outbox_lease")
            assert cursor.fetchall() == [("new",)], "the old worker's lease ended with its events"
    finally:
        conn.close()


def test_migrate_reports_an_unreachable_database():
    with pytest.raises(DatabaseUnavailable, match="database unreachable"):
        migrator.migrate("postgresql://postgres@127.0.0.1:1/postgres")


def test_embedded_cluster_starts_restarts_and_keeps_its_data(tmp_path):
    cluster = EmbeddedPostgres(tmp_path / "home", settings={"fsync": "off"})
    url = cluster.ensure_running()
    try:
        assert cluster.ensure_running() == url, "a running cluster is reused, not restarted"
        assert stat.S_IMODE(os.stat(cluster.password_file).st_mode) == 0o600
        migrator.migrate(url)
        cluster.stop()
        assert not cluster.is_running()
        with pytest.raises(DatabaseUnavailable):
            migrator.migrate(url)
        assert cluster.ensure_running() == url
        assert migrator.migrate(url) == [], "the data survived the restart"
    finally:
        cluster.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to a service user")
def test_embedded_cluster_under_root_refuses_a_home_it_cannot_reach_and_opens_up_nothing(
    tmp_path,
):
    private_parent = tmp_path / "private"
    private_parent.mkdir(mode=0o700)
    cluster = EmbeddedPostgres(private_parent / "home", settings={"fsync": "off"})
    with pytest.raises(EmbeddedPostgresError, match="is not searchable by it. Set IPAI_BUS_HOME"):
        cluster.ensure_running()
    assert stat.S_IMODE(os.stat(private_parent).st_mode) == 0o700, "no permission was changed"
    assert not (private_parent / "home").exists(), "nothing was written"


def test_embedded_cluster_refuses_a_wrong_password(tmp_path):
    cluster = EmbeddedPostgres(tmp_path / "home", settings={"fsync": "off"})
    url = cluster.ensure_running()
    try:
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(url.replace(url.split(":")[2].split("@")[0], "wrong"))
    finally:
        cluster.stop()
