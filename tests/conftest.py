"""Test fixtures: a real PostgreSQL (DATABASE_URL's server, else a throw-away embedded cluster),
one database migrated once per session, and a clean outbox for every test that asks for it."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from ipai_bus_lib.storage.db import Database
from ipai_bus_lib.storage.embedded import EmbeddedPostgres
from ipai_bus_lib.storage.migrator import migrate


def pytest_configure(config: pytest.Config) -> None:
    """Each run's temporary files, embedded PostgreSQL included, in a directory of its own.

    pytest's shared default (/tmp/pytest-of-<user>) is reset to mode 0700 by every run, which
    locks a concurrent run's PostgreSQL (another user, under root) out of its own data. A
    private base directory that others may traverse but not list keeps runs apart.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        base = tempfile.mkdtemp(prefix="ipai-bus-tests-")
        config.option.basetemp = base
        config._ipai_private_basetemp = base  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A skip is said once per reason in the summary, however many tests it skips: pytest
    counts skips by file and line, so without Odoo the same sentence came fourteen times."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        report.longrepr = (str(Path(__file__).parent), None, report.longrepr[2])


def pytest_unconfigure(config: pytest.Config) -> None:
    base = getattr(config, "_ipai_private_basetemp", None)
    if base:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _reachable_base_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The base directory searchable by others, not listable: pytest makes it 0700."""
    os.chmod(tmp_path_factory.getbasetemp(), 0o711)


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's per-test directory, searchable by others (not listable) like the base above.

    Under root the embedded PostgreSQL runs as a system user, and the bus never opens up a
    parent directory it does not own: the harness makes its own directories reachable.
    """
    os.chmod(tmp_path, 0o711)
    return tmp_path


# A throw-away cluster need not survive a power cut: tests run faster without fsync.
_FAST_TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_TABLES_CLEANED_PER_TEST = (
    "integration.outbox",
    "integration.outbox_lease",
    "integration.event_key",
    "integration.event_log",
    "integration.ingest_batch",
    "integration.signed_message",
    "integration.destination_state",  # a paused destination must not reach the next test
    "integration.operator_actions",
    "integration.delivery_attempts",  # a test counting attempts must not count an earlier one's
)
_APPEND_ONLY_TABLES = ("integration.event_log", "integration.signed_message")


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An administrative URL of a real PostgreSQL server for the whole session."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    base = tmp_path_factory.mktemp("pg")
    os.chmod(base, 0o711)  # as tmp_path: reachable by the service user under root
    cluster = EmbeddedPostgres(base / "home", settings=_FAST_TEST_SETTINGS)
    url = cluster.ensure_running()
    yield url
    cluster.stop()


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test server; all dropped at the end."""
    created: list[str] = []

    def make() -> str:
        name = f"ipai_test_{uuid.uuid4().hex[:12]}"
        _admin(server_url, f'create database "{name}"')
        created.append(name)
        return with_database(server_url, name)

    yield make
    for name in created:
        _admin(server_url, f'drop database if exists "{name}" with (force)')


def _admin(url: str, statement: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def bus_url(make_database: Callable[[], str]) -> str:
    """A database with every migration applied, shared by the session's tests."""
    url = make_database()
    migrate(url)
    return url


@pytest.fixture()
def clean_bus(bus_url: str) -> str:
    """``bus_url`` with the bus tables emptied first.

    The append-only tables' guards are set aside for the truncate, in the same transaction, as
    their owner may (DATABASE_URL may name a non-superuser owner, as Supabase's `postgres` is);
    no runtime role owns them, so none can do this.
    """
    conn = psycopg2.connect(bus_url)
    try:
        with conn, conn.cursor() as cursor:
            for table in _APPEND_ONLY_TABLES:
                cursor.execute(f"alter table {table} disable trigger user")
            cursor.execute(f"truncate {', '.join(_TABLES_CLEANED_PER_TEST)}")
            for table in _APPEND_ONLY_TABLES:
                cursor.execute(f"alter table {table} enable trigger user")
    finally:
        conn.close()
    return bus_url


@pytest.fixture()
def conn(clean_bus: str) -> Iterator[psycopg2.extensions.connection]:
    """A superuser connection to a clean bus database (autocommit off)."""
    connection = psycopg2.connect(clean_bus)
    yield connection
    connection.close()


@pytest.fixture()
def database(clean_bus: str) -> Iterator[Database]:
    """The library's connection pool on a clean bus database."""
    pool = Database(clean_bus, max_size=30)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def vectors_path() -> Path:
    return Path(__file__).parent / "vectors" / "signing.json"
