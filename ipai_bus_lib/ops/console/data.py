"""What the console shows, read from the database: the overview, a page of events, one event,
the dead letters and the destinations. Writes go through ``operations`` (audited)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...storage.queries import load
from .. import operations

SQL = load("console")
PAGE_SIZE = 50
# Completed events are counted up to this many; beyond, the planner's estimate is shown (≈).
EXACT_COUNT_LIMIT = 100_000
# Statuses with few rows behind a partial index: a status filter on one of them reads the outbox.
OUTBOX_DRIVEN = frozenset({"pending", "processing", "failed", "dead"})


def _rows(cursor: Any, name: str, params: Any = None) -> list[dict[str, Any]]:
    cursor.execute(SQL[name], params)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class Overview:
    """The bus at a glance."""

    waiting: dict[str, int]
    completed: int
    completed_exact: bool  # counted; else the planner's estimate (a large table)
    oldest_pending_seconds: float | None
    per_minute: list[int]  # index 0 is the current minute, 59 an hour ago
    paused: list[dict[str, Any]]
    held_by_order: int
    expired_leases: int
    now: datetime  # the database's, in its zone: the chart's clock times


def overview(cursor: Any) -> Overview:
    """The overview page's figures: waiting events by status, completed ones (counted exactly
    up to EXACT_COUNT_LIMIT, estimated beyond), the oldest wait, events per minute over the last
    hour, paused destinations, and what order and expired leases hold back."""
    waiting = dict((status, int(count)) for status, count in _tuples(cursor, "waiting_counts"))
    [(counted,)] = _tuples(cursor, "completed_up_to", (EXACT_COUNT_LIMIT + 1,))
    exact = counted <= EXACT_COUNT_LIMIT
    if not exact:
        [(logged,)] = _tuples(cursor, "estimated_logged_events")
        counted = max(EXACT_COUNT_LIMIT, int(logged) - sum(waiting.values()))
    [(oldest,)] = _tuples(cursor, "oldest_pending_seconds")
    per_minute = [0] * 60
    for minutes_ago, count in _tuples(cursor, "per_minute_last_hour"):
        if 0 <= minutes_ago < 60:
            per_minute[minutes_ago] = int(count)
    status = operations.status_counters(cursor)
    return Overview(
        waiting=waiting,
        completed=int(counted),
        completed_exact=exact,
        oldest_pending_seconds=float(oldest) if oldest is not None else None,
        per_minute=per_minute,
        paused=_rows(cursor, "paused_destinations"),
        held_by_order=status["held_by_order"],
        expired_leases=status["expired_leases"],
        now=_tuples(cursor, "now")[0][0],
    )


def _tuples(cursor: Any, name: str, params: Any = None) -> list[tuple[Any, ...]]:
    cursor.execute(SQL[name], params)
    return list(cursor.fetchall())


@dataclass(frozen=True)
class EventFilter:
    """The events page's filters, as a person types them (all optional)."""

    status: str | None = None
    type_pattern: str | None = None
    source: str | None = None
    record: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def like(self) -> str | None:
        """``expense.*`` → ``expense.%``; ``*`` or empty → no filter; a plain type as is."""
        pattern = (self.type_pattern or "").strip()
        if not pattern or pattern == "*":
            return None
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped.replace("*", "%")


@dataclass(frozen=True)
class Page:
    """One page of events, newest first, and where the next (older) page starts."""

    rows: list[dict[str, Any]]
    next_cursor: str | None = None
    filters: EventFilter = field(default_factory=EventFilter)


def events_page(cursor: Any, filters: EventFilter, cursor_text: str | None = None) -> Page:
    """One page of events matching ``filters``, newest first, after the keyset ``cursor_text``
    (from the previous page's "older" link)."""
    before_at, before_position = parse_cursor(cursor_text)
    params = {
        "status": filters.status,
        "type_like": filters.like(),
        "source": filters.source or None,
        "record": filters.record or None,
        "since": filters.since,
        "until": filters.until,
        "before_at": before_at,
        "before_position": before_position,
        "limit": PAGE_SIZE + 1,
    }
    query = "events_from_outbox" if filters.status in OUTBOX_DRIVEN else "events_from_log"
    rows = _rows(cursor, query, params)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_cursor = f"{rows[-1]['at'].isoformat()}|{rows[-1]['position']}" if more else None
    return Page(rows, next_cursor, filters)


def parse_cursor(text: str | None) -> tuple[datetime | None, int | None]:
    """``<ISO moment>|<position>`` as the page after which to continue; None for the first."""
    if not text:
        return None, None
    moment, _, position = text.partition("|")
    try:
        return datetime.fromisoformat(moment), int(position)
    except ValueError:
        raise ValueError(f"not a page position: {text!r}") from None


def event_detail(cursor: Any, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The event's envelope, outbox state, attempts, operator actions, and what it waits for."""
    return operations.event_history(cursor, event_id)


def dead_letters(cursor: Any, cursor_text: str | None = None, type_pattern: str | None = None) -> Page:
    """One page of dead events, newest first, after the keyset ``cursor_text``, of the types
    ``type_pattern`` matches (``expense.*``, a type, or all)."""
    before_at, before_id = None, None
    if cursor_text:
        moment, _, raw_id = cursor_text.partition("|")
        try:
            before_at, before_id = datetime.fromisoformat(moment), uuid.UUID(raw_id)
        except ValueError:
            raise ValueError(f"not a page position: {cursor_text!r}") from None
    rows = _rows(
        cursor,
        "dead_letters",
        {
            "before_at": before_at,
            "before_id": before_id,
            "type_like": EventFilter(type_pattern=type_pattern).like(),
            "limit": PAGE_SIZE + 1,
        },
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_cursor = f"{rows[-1]['updated_at'].isoformat()}|{rows[-1]['id']}" if more else None
    return Page(rows, next_cursor)


def destination_states(cursor: Any) -> dict[str, dict[str, Any]]:
    """Each destination's breaker state as routers last saved it, and its newest failed or
    refused attempt (``latest_failure``), by destination name."""
    states: dict[str, dict[str, Any]] = {
        row["destination"]: row for row in _rows(cursor, "destination_states")
    }
    for failure in _rows(cursor, "latest_failures"):
        states.setdefault(failure["destination"], {})["latest_failure"] = failure
    return states
