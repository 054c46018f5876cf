"""Database connections: a small thread-safe psycopg2 pool and the translation of driver errors.

Driver exceptions are turned into the library's own here and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from .errors import (
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    IpaiBusError,
    ReplayedSignature,
)

# SQLSTATE classes that mean "the server is not there right now", not "your statement is wrong".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P", "53")
INVALID_PARAMETER_SQLSTATE = "22023"
REPLAYED_SIGNATURE_SQLSTATE = "IB001"

psycopg2.extras.register_uuid()


def translate_error(exc: Exception) -> IpaiBusError:
    """The library error for a psycopg2 exception (raise it ``from exc``)."""
    sqlstate = getattr(exc, "pgcode", None)
    message = _first_line(exc)
    if sqlstate == REPLAYED_SIGNATURE_SQLSTATE:
        return ReplayedSignature()
    if sqlstate == INVALID_PARAMETER_SQLSTATE:
        return InvalidArgument(message, sqlstate=sqlstate)
    if isinstance(exc, psycopg2.InterfaceError) or (
        isinstance(exc, psycopg2.OperationalError)
        and (sqlstate is None or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES))
    ):
        return DatabaseUnavailable(
            f"database unreachable: {message} (check DATABASE_URL and that PostgreSQL is running)",
            sqlstate=sqlstate,
        )
    return DatabaseError(message, sqlstate=sqlstate)


def _first_line(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def connect(dsn: str, *, connect_timeout: int = 5, application_name: str = "ipai-bus",
            settings: Mapping[str, str] | None = None) -> Any:
    """One new connection (autocommit off); raises DatabaseUnavailable when it cannot be made.

    ``settings`` are session parameters (``{"synchronous_commit": "off"}``).
    """
    options = " ".join(f"-c {name}={value}" for name, value in (settings or {}).items())
    try:
        return psycopg2.connect(
            dsn,
            connect_timeout=connect_timeout,
            application_name=application_name,
            keepalives=1,
            keepalives_idle=30,
            **({"options": options} if options else {}),
        )
    except psycopg2.Error as exc:
        raise translate_error(exc) from exc


class Database:
    """A bounded, thread-safe pool of connections to one PostgreSQL database.

    Connections are made on demand up to ``max_size`` and kept for reuse. A connection that fails
    with a connection-level error is dropped, so the pool heals by itself once the server is back.
    """

    def __init__(
        self, dsn: str, *, max_size: int = 10, connect_timeout: int = 5,
        acquire_timeout: float = 10.0, application_name: str = "ipai-bus",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self._settings = dict(settings or {})
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._application_name = application_name
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection; it goes back to the pool clean (rolled back if left open).

        Raises DatabaseUnavailable when none can be had within the acquire timeout.
        """
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise DatabaseUnavailable(
                f"no database connection free within {self._acquire_timeout:g} s (pool exhausted)"
            )
        conn = None
        try:
            conn = self._take_idle() or connect(
                self.dsn, connect_timeout=self._connect_timeout,
                application_name=self._application_name, settings=self._settings,
            )
            yield conn
        except psycopg2.Error as exc:
            raise translate_error(exc) from exc
        finally:
            self._give_back(conn)
            self._slots.release()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on any error."""
        with self.connection() as conn:
            try:
                with conn.cursor() as cursor:
                    yield cursor
                conn.commit()
            except BaseException:
                _rollback_quietly(conn)
                raise

    @contextmanager
    def autocommit(self) -> Iterator[Any]:
        """A cursor whose every statement is its own transaction: one round trip, no BEGIN."""
        with self.connection() as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cursor:
                    yield cursor
            finally:
                if not conn.closed:
                    conn.autocommit = False

    def _take_idle(self) -> Any:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def _give_back(self, conn: Any) -> None:
        if conn is None or conn.closed:
            return
        status = conn.get_transaction_status()
        if status == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
            conn.close()  # the server went away under it
            return
        if status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            _rollback_quietly(conn)
        if conn.closed:
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close every idle connection; borrowed ones close when they come back."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _rollback_quietly(conn: Any) -> None:
    try:
        conn.rollback()
    except psycopg2.Error:
        conn.close()
