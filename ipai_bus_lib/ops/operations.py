"""Operator queries and actions: what is pending, stuck or dead, one event's history, retry, purge.

Reads go straight to the tables; actions go through the SQL functions that keep the audit trail.
"""

from __future__ import annotations

import getpass
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..core.errors import InvalidInput
from ..storage.outbox import EVENT_STATUSES
from ..storage.queries import load

SQL = load("operations")

# purge_completed refuses less (the SQL function's own rule): checked before asking it.
MIN_PURGE_AGE = timedelta(hours=1)
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` as a timedelta; raises ValueError otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 15m, 90s or 2w")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def current_actor() -> str:
    """Who is acting, for the audit trail: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _rows(cursor: Any, sql: str, params: Any = None) -> list[dict[str, Any]]:
    cursor.execute(sql, params)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class Status:
    """The bus at a glance."""

    by_status: dict[str, int]
    by_type: list[dict[str, Any]]
    oldest_pending_seconds: float | None
    oldest_failed_seconds: float | None
    held_by_order: int
    expired_leases: int
    latest_dead: list[dict[str, Any]]
    logged_last_hour: int
    logged_last_hour_by_type: dict[str, int]
    open_circuits: list[dict[str, Any]]
    shared_sources: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "by_status": self.by_status,
            "by_type": self.by_type,
            "oldest_pending_seconds": self.oldest_pending_seconds,
            "oldest_failed_seconds": self.oldest_failed_seconds,
            "waiting_behind_an_earlier_event": self.held_by_order,
            "expired_leases": self.expired_leases,
            "latest_dead": [
                {**row, "id": str(row["id"]), "updated_at": row["updated_at"].isoformat()}
                for row in self.latest_dead
            ],
            "event_log_last_hour": {
                "total": self.logged_last_hour,
                "by_type": self.logged_last_hour_by_type,
            },
            "open_circuits": [
                {**row, "open_until": row["open_until"].isoformat() if row["open_until"] else None}
                for row in self.open_circuits
            ],
            "sources_shared_by_databases": self.shared_sources,
        }


def status(cursor: Any, *, dead_limit: int = 10) -> Status:
    """Counts by status and type, the oldest pending age, expired leases, the latest dead."""
    cursor.execute(SQL["count_by_status"])
    by_status = {name: 0 for name in EVENT_STATUSES} | dict(cursor.fetchall())
    by_type = _rows(cursor, SQL["waiting_by_type"])
    cursor.execute(SQL["oldest_waiting_seconds"])
    oldest_pending, oldest_failed = cursor.fetchone()
    counters = status_counters(cursor)
    dead = _rows(cursor, SQL["latest_dead"], (dead_limit,))
    cursor.execute(SQL["logged_last_hour"])
    logged = dict(cursor.fetchall())
    circuits = open_circuits(cursor)
    shared = _rows(cursor, SQL["shared_sources"])
    return Status(
        by_status,
        by_type,
        float(oldest_pending) if oldest_pending is not None else None,
        float(oldest_failed) if oldest_failed is not None else None,
        counters["held_by_order"],
        counters["expired_leases"],
        dead,
        sum(logged.values()),
        logged,
        circuits,
        shared,
    )


def status_counters(cursor: Any) -> dict[str, int]:
    """Events waiting behind an earlier one of their record, and leases that ran out."""
    cursor.execute(SQL["held_by_order"])
    held = int(cursor.fetchone()[0])
    cursor.execute(SQL["expired_leases"])
    return {"held_by_order": held, "expired_leases": int(cursor.fetchone()[0])}


def event_history(cursor: Any, event_id: uuid.UUID) -> dict[str, Any] | None:
    """One event: its outbox row (None once completed), audit copy, every delivery attempt,
    and, when completed, its ``completion`` (the last attempt's number, when it was delivered)."""
    outbox_rows = _rows(cursor, SQL["outbox_row"], (event_id,))
    logged = _rows(cursor, SQL["event_log_row"], (event_id,))
    if not outbox_rows and not logged:
        return None
    attempts = _rows(cursor, SQL["delivery_attempts_of"], (event_id,))
    return {
        "outbox": outbox_rows[0] if outbox_rows else None,
        "event_log": logged[0] if logged else None,
        "completion": None if outbox_rows else completion(attempts),
        "attempts": attempts,
        "waiting_behind": waiting_behind(cursor, event_id),
        "actions": _rows(cursor, SQL["operator_actions_on"], (event_id,)),
    }


def completion(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """What a completed event's attempts say of it: the last attempt's number and when its
    last delivery was (None for neither when no attempt was recorded)."""
    delivered = [a["attempted_at"] for a in attempts if a["outcome"] == "delivered"]
    return {
        "attempts": max((a["attempt"] for a in attempts), default=None),
        "delivered_at": max(delivered, default=None),
    }


def waiting_behind(cursor: Any, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The earliest undelivered event of the same record accepted before ``event_id``, which
    per-record ordering makes it wait for; None when nothing holds it."""
    rows = _rows(cursor, SQL["waiting_behind"], (event_id,))
    return rows[0] if rows else None


def shorten(text: str, width: int) -> str:
    """The first line of ``text`` in at most ``width`` characters, cut between words (…)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= width:
        return line
    cut = line[: width - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "…"


def events_since(cursor: Any, after_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """Accepted events with an event_log id above ``after_id``, oldest first (for ``tail``)."""
    return _rows(cursor, SQL["events_since"], (after_id, limit))


def last_log_id(cursor: Any) -> int:
    """The newest event_log id (0 when empty): where `events tail` starts."""
    cursor.execute(SQL["last_log_id"])
    return int(cursor.fetchone()[0])


def select_for_retry(
    cursor: Any,
    *,
    type_pattern: str | None = None,
    since: timedelta | None = None,
    include_failed: bool = False,
) -> list[uuid.UUID]:
    """Dead (and, if asked, failed) events matching a type pattern (``expense.*``) and age."""
    statuses = ["dead", "failed"] if include_failed else ["dead"]
    like = None
    if type_pattern and type_pattern != "*":
        like = type_pattern[:-1] + "%" if type_pattern.endswith(".*") else type_pattern
    cursor.execute(SQL["select_for_retry"], (statuses, like, like, since, since))
    return [row[0] for row in cursor.fetchall()]


def retry(cursor: Any, event_ids: list[uuid.UUID], *, actor: str, reason: str | None) -> int:
    """Put failed/dead events back to pending (attempts reset); audited. Returns how many."""
    cursor.execute(SQL["retry_events"], (event_ids, actor, reason))
    return int(cursor.fetchone()[0])


def open_circuits(cursor: Any) -> list[dict[str, Any]]:
    """The paused destinations: name, failures, until when, the last error."""
    return _rows(cursor, SQL["open_circuits"])


def resume_destination(cursor: Any, destination: str, *, actor: str, reason: str | None) -> bool:
    """Ask the routers to try a paused destination now; audited. False when it is not paused."""
    cursor.execute(SQL["resume_destination"], (destination, actor, reason))
    return bool(cursor.fetchone()[0])


def purge_completed(cursor: Any, older_than: timedelta, *, actor: str) -> int:
    """Forget the idempotency keys of events completed more than ``older_than`` ago (a resend
    is then accepted as new; the event_log and the attempts stay); audited. Returns how many."""
    cursor.execute(SQL["purge_completed"], (older_than, actor))
    return int(cursor.fetchone()[0])


def existing_ids(cursor: Any, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``event_ids`` the bus accepted (completed ones too)."""
    cursor.execute(SQL["existing_ids"], (event_ids,))
    return {row[0] for row in cursor.fetchall()}


def statuses_of(cursor: Any, event_ids: list[str]) -> dict[str, str]:
    """The status of each of ``event_ids`` the bus accepted (completed once delivered)."""
    cursor.execute(SQL["statuses_of"], (event_ids,))
    return dict(cursor.fetchall())


def types_of(cursor: Any, event_ids: list[uuid.UUID]) -> list[str]:
    """The event types among ``event_ids``, each once."""
    cursor.execute(SQL["types_of"], (event_ids,))
    return [row[0] for row in cursor.fetchall()]


def last_errors_of(cursor: Any, event_ids: list[str]) -> dict[str, str]:
    """The last error of each of ``event_ids`` that has one."""
    cursor.execute(SQL["last_errors_of"], (event_ids,))
    return dict(cursor.fetchall())


def parse_event_ids(texts: list[str]) -> list[uuid.UUID]:
    """Event ids from the command line; raises InvalidInput naming the first bad one."""
    ids = []
    for text in texts:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            raise InvalidInput(f"{text!r} is not an event id (a UUID)") from None
    return ids


def age(seconds: float | None) -> str:
    """``3d 4h``, ``12m 5s``: an age a person reads at a glance."""
    if seconds is None:
        return "—"
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return " ".join(parts[:2])


def when(moment: datetime | None) -> str:
    """A stored moment as an operator reads it, saying its zone ("2026-12-02 14:15:42 UTC");
    one Python cannot represent, as stored."""
    if not moment:
        return "—"
    if not isinstance(moment, datetime):
        return str(moment)
    zone = moment.strftime("%Z") if moment.tzinfo is not None else ""
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f" {zone}" if zone else "")
