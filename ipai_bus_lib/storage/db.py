"""Database connections: a small thread-safe psycopg2 pool and the translation of driver errors.

Driver exceptions are turned into the library's own here and nowhere else. Every connection the
library makes reads stored values defensively (a value Python cannot represent comes back as its
text, never as an exception that would fail a whole batch), and every borrow can carry a
wall-clock deadline, so a database that stops answering costs a bounded wait, not a hang.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from ..core import exact_json
from ..core.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    IpaiBusError,
    ReplayedSignature,
)
from ..core.watchdog import WATCHDOG, shutdown_socket

# SQLSTATE classes that mean "the server is not there right now", not "your statement is wrong".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P", "53")
INVALID_PARAMETER_SQLSTATE = "22023"
# A lost race for rows: lock_not_available (lock_timeout), deadlock_detected, serialization_failure.
_BUSY_SQLSTATES = ("55P03", "40P01", "40001")
REPLAYED_SIGNATURE_SQLSTATE = "IB001"
# After a borrow with a deadline finds the database not answering, others fail at once for this
# long; then one borrow at a time tries again.
DOWN_PAUSE_SECONDS = 1.0

psycopg2.extras.register_uuid()


def _uuid_from_output(text: str | None, cursor: Any) -> uuid.UUID | None:
    """A uuid column's value: PostgreSQL writes the canonical form, so the checks and parsing of
    UUID(text) (0.6 µs of its 1.3 µs) are not needed; a router reads one per claimed event."""
    if text is None:
        return None
    value = object.__new__(uuid.UUID)
    object.__setattr__(value, "int", int(text.replace("-", ""), 16))
    object.__setattr__(value, "is_safe", uuid.SafeUUID.unknown)
    return value


_UUID = psycopg2.extensions.new_type((2950,), "IPAI_UUID", _uuid_from_output)
psycopg2.extensions.register_type(_UUID)
psycopg2.extensions.register_type(psycopg2.extensions.new_array_type((2951,), "IPAI_UUID[]", _UUID))


class UnreadableValue:
    """A stored value Python cannot represent (a timestamp beyond year 9999, a JSON number of
    more digits than Python converts): kept as its text, with the reason, so one such row never
    fails the query that read it."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"UnreadableValue({self.text[:60]!r}, {self.reason!r})"


def _tolerant(caster: Any, name: str) -> Any:
    def cast(value: str | None, cursor: Any) -> Any:
        if value is None:
            return None
        try:
            return caster(value, cursor)
        except (ValueError, OverflowError, psycopg2.DataError) as exc:
            return UnreadableValue(value, str(exc))

    return psycopg2.extensions.new_type(caster.values, name, cast)


_TOLERANT_CASTERS = (
    _tolerant(psycopg2.extensions.PYDATETIMETZ, "IPAI_TIMESTAMPTZ"),
    _tolerant(psycopg2.extensions.PYDATETIME, "IPAI_TIMESTAMP"),
    _tolerant(psycopg2.extensions.PYDATE, "IPAI_DATE"),
)


def _tolerant_json(text: str) -> Any:
    try:
        return exact_json.loads(text)
    except (ValueError, RecursionError) as exc:
        # Python's own advice after the ";" (raise an interpreter limit) is not the operator's.
        reason = str(exc).split(";")[0][:200]
        return UnreadableValue(text[:1000], f"{type(exc).__name__}: {reason}")


def _read_values_tolerantly(conn: Any) -> None:
    for caster in _TOLERANT_CASTERS:
        psycopg2.extensions.register_type(caster, conn)
    psycopg2.extras.register_default_json(conn, loads=_tolerant_json)
    psycopg2.extras.register_default_jsonb(conn, loads=_tolerant_json)


def translate_error(exc: Exception) -> IpaiBusError:
    """The library error for a psycopg2 exception (raise it ``from exc``)."""
    sqlstate = getattr(exc, "pgcode", None)
    message = _first_line(exc)
    if sqlstate == REPLAYED_SIGNATURE_SQLSTATE:
        return ReplayedSignature()
    if sqlstate == INVALID_PARAMETER_SQLSTATE:
        return InvalidArgument(message, sqlstate=sqlstate)
    if sqlstate in _BUSY_SQLSTATES:
        return DatabaseBusy(message, sqlstate=sqlstate)
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


def connect(
    dsn: str,
    *,
    connect_timeout: int = 5,
    application_name: str = "ipai-bus",
    settings: Mapping[str, str] | None = None,
) -> Any:
    """One new connection (autocommit off); raises DatabaseUnavailable when it cannot be made.

    ``settings`` are session parameters (``{"synchronous_commit": "off"}``).
    """
    options = " ".join(f"-c {name}={value}" for name, value in (settings or {}).items())
    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=max(2, int(connect_timeout)),
            application_name=application_name,
            keepalives=1,
            keepalives_idle=30,
            **({"options": options} if options else {}),
        )
    except psycopg2.Error as exc:
        raise translate_error(exc) from exc
    _read_values_tolerantly(conn)
    return conn


class _Connector:
    """Makes connections on helper threads, so a caller can stop waiting at its own deadline
    (libpq will not time out under 2 s); a connection that arrives too late is closed."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def connect_within(self, seconds: float, dsn: str, **options: Any) -> Any:
        future = self._pool().submit(connect, dsn, **options)
        try:
            return future.result(timeout=max(seconds, 0.001))
        except FutureTimeout:
            future.add_done_callback(_close_if_connected)
            raise DatabaseUnavailable(
                f"database unreachable: no connection within {seconds:.1f} s (check DATABASE_URL"
                " and that PostgreSQL is running)"
            ) from None

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._pid != os.getpid():  # a fork leaves no threads
                self._executor = ThreadPoolExecutor(4, thread_name_prefix="db-connect")
                self._pid = os.getpid()
            return self._executor


def _close_if_connected(future: Any) -> None:
    if future.exception() is None:
        future.result().close()


_CONNECTOR = _Connector()


class Database:
    """A bounded, thread-safe pool of connections to one PostgreSQL database.

    Connections are made on demand up to ``max_size`` and kept for reuse. A connection that fails
    with a connection-level error is dropped, so the pool heals by itself once the server is back.

    With ``deadline_seconds`` every borrow (waiting for a slot, connecting, and all the work done
    with the connection) must end within that many seconds: past it the connection is cut and
    DatabaseUnavailable raised, even when the server accepted the bytes and never answers.
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 5,
        acquire_timeout: float = 10.0,
        application_name: str = "ipai-bus",
        settings: Mapping[str, str] | None = None,
        deadline_seconds: float | None = None,
    ) -> None:
        self.dsn = dsn
        self._settings = dict(settings or {})
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._application_name = application_name
        self._deadline_seconds = deadline_seconds
        self._down_until: float | None = None
        self._probing = False
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection; it goes back to the pool clean (rolled back if left open).

        Raises DatabaseUnavailable when none can be had within the acquire timeout, or when the
        borrow outlives the pool's deadline. With a deadline, a pool that just found the
        database not answering answers DatabaseUnavailable at once for a moment, and lets one
        borrow at a time find out whether it is back, so callers do not queue behind timeouts.
        """
        if self._deadline_seconds is None:
            with self._borrow(None) as conn:
                yield conn
            return
        probing = self._admit_while_down()
        try:
            with self._borrow(self._deadline_seconds) as conn:
                yield conn
        except DatabaseUnavailable:
            self._mark_down()
            raise
        else:
            self._mark_up()
        finally:
            if probing:
                with self._lock:
                    self._probing = False

    def _admit_while_down(self) -> bool:
        """Raise if the database was just found not answering; True if this borrow is the probe."""
        with self._lock:
            if self._down_until is None:
                return False
            if time.monotonic() < self._down_until or self._probing:
                raise DatabaseUnavailable("database unavailable: it stopped answering moments ago")
            self._probing = True
            return True

    def _mark_down(self) -> None:
        with self._lock:
            self._down_until = time.monotonic() + DOWN_PAUSE_SECONDS

    def _mark_up(self) -> None:
        if self._down_until is not None:
            with self._lock:
                self._down_until = None

    @contextmanager
    def _borrow(self, budget: float | None) -> Iterator[Any]:
        started = time.monotonic()
        wait = self._acquire_timeout if budget is None else min(self._acquire_timeout, budget)
        if not self._slots.acquire(timeout=wait):
            raise DatabaseUnavailable(f"no database connection free within {wait:g} s (pool exhausted)")
        conn = None
        guard = None
        try:
            conn = self._take_idle() or self._connect(
                None if budget is None else budget - (time.monotonic() - started)
            )
            if budget is not None:
                remaining = max(budget - (time.monotonic() - started), 0.001)
                guard = WATCHDOG.register(remaining, functools.partial(shutdown_socket, conn.fileno()))
            yield conn
        except psycopg2.Error as exc:
            if guard is not None and guard.expired:
                raise DatabaseUnavailable(
                    f"database unavailable: no answer within {budget:g} s"
                ) from exc
            error = translate_error(exc)
            if isinstance(error, DatabaseUnavailable):
                self._drop_idle()  # made before the server went away: as broken as this one
            raise error from exc
        finally:
            if guard is not None:
                WATCHDOG.cancel(guard)
                if guard.expired and conn is not None:
                    conn.close()
            self._give_back(conn)
            self._slots.release()

    def _connect(self, seconds: float | None) -> Any:
        options: dict[str, Any] = {
            "connect_timeout": self._connect_timeout,
            "application_name": self._application_name,
            "settings": self._settings,
        }
        if seconds is None:
            return connect(self.dsn, **options)
        return _CONNECTOR.connect_within(seconds, self.dsn, **options)

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
        self._drop_idle()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _rollback_quietly(conn: Any) -> None:
    try:
        conn.rollback()
    except psycopg2.Error:
        conn.close()
