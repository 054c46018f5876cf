"""Settling a batch: each event's fate from its attempts (acknowledged, retried, dead or handed
back), written with every attempt in one transaction, event by event if that fails."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ...core import tracing
from ...core.errors import DatabaseUnavailable
from ...core.storability import storable_text
from ...core.stored_event import StoredEvent
from ...storage import outbox
from ...storage.db import Database
from ...storage.queries import load
from .config import LATEST_EPOCH_SECONDS, RouterConfig
from .planning import POISON_HINT, Attempt

log = logging.getLogger("ipai_bus.router")
SQL = load("router")


@dataclass
class Verdict:
    """What one claimed event comes to after its attempts."""

    acked: list[uuid.UUID] = field(default_factory=list)
    failed: list[tuple[StoredEvent, str, float | None]] = field(default_factory=list)
    dead: list[tuple[StoredEvent, str]] = field(default_factory=list)
    released: list[tuple[uuid.UUID, float | None]] = field(default_factory=list)

    def only(self, event_id: uuid.UUID) -> Verdict:
        """The part of this verdict about one event."""
        return Verdict(
            acked=[i for i in self.acked if i == event_id],
            failed=[f for f in self.failed if f[0].id == event_id],
            dead=[d for d in self.dead if d[0].id == event_id],
            released=[r for r in self.released if r[0] == event_id],
        )


@dataclass(frozen=True)
class Death:
    """An event the router gave up on: which, why (one of DEATH_REASONS) and the error."""

    event: StoredEvent
    reason: str
    error: str


# Why an event went dead, as counted in ipai_router_dead_events_total{reason}.
# How an unrouted event's last_error begins; the console recognises it to warn before a retry.
NO_ROUTE_ERROR = "no route matches event type "
DEATH_REASONS = ("refused", "no_route", "unreadable", "attempts_exhausted", "unrecordable")


def death_line(worker: str, death: Death) -> str:
    """One JSON line, as the receiver logs each request: grep-able and parsed by log pipelines."""
    event = death.event
    return json.dumps(
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": "event_dead",
            "reason": death.reason,
            "event_id": str(event.id),
            "event_type": event.event_type,
            "source": event.source,
            "record": f"{event.aggregate_type}/{event.aggregate_id}",
            "attempt": event.attempts,
            "max_attempts": event.max_attempts,
            "worker": worker,
            "error": death.error,
            "next": f"ipai-bus events show {event.id}",
        },
        ensure_ascii=False,
    )


class Settler:
    """Writes verdicts; tells ``on_settled`` which events it is done with, whatever happened."""

    def __init__(
        self,
        config: RouterConfig,
        database: Database,
        on_settled: Callable[[list[StoredEvent]], None],
        on_recorded: Callable[[list[Attempt]], None] | None = None,
        on_dead: Callable[[Death], None] | None = None,
        traces: Any = None,
    ) -> None:
        self.config, self.database, self.on_settled = config, database, on_settled
        self.on_recorded = on_recorded
        self.on_dead = on_dead
        self.traces = traces  # an EventTraces, told when each event's fate is written

    def settle(
        self, events: list[StoredEvent], attempts: list[Attempt], unrouted: list[StoredEvent]
    ) -> None:
        """Write each event's fate from its attempts in one transaction: acknowledged,
        retried at its back-off (or a destination's Retry-After), dead with the reason, or
        handed back unstarted; unrouted events go dead saying which route is missing. The
        attempts are recorded beside them. A database that is away raises DatabaseUnavailable
        (the leases run out and the events come back)."""
        verdict = judge(events, attempts, unrouted)
        for event in unrouted:
            verdict.dead.append(
                (
                    event,
                    f"{NO_ROUTE_ERROR}{event.event_type}; add "
                    "one to the routes file, then `ipai-bus retry`",
                )
            )
        recorded = [a for a in attempts if a.outcome != "not_started"]
        if self.on_recorded is not None:
            self.on_recorded(recorded)
        try:
            started_ns = tracing.now_ns()
            deaths = self._write_verdict(verdict, recorded, unrouted)
            if self.traces is not None:
                self.traces.settled(verdict, started_ns, tracing.now_ns())
            self._report(deaths)
        except DatabaseUnavailable:
            raise  # the leases run out and the events come back: nothing is lost
        except Exception:  # noqa: BLE001 - one event's outcome must not stop the others'
            log.exception(
                "router %s: settling a batch failed; settling its events one by one", self.config.worker
            )
            self._settle_one_by_one(events, verdict, recorded, unrouted)
        finally:
            if self.traces is not None:
                self.traces.forget(events)
            self.on_settled(events)

    def _settle_one_by_one(
        self,
        events: list[StoredEvent],
        verdict: Verdict,
        recorded: list[Attempt],
        unrouted: list[StoredEvent],
    ) -> None:
        for event in events:
            try:
                self._report(
                    self._write_verdict(
                        verdict.only(event.id),
                        [a for a in recorded if a.event.id == event.id],
                        [e for e in unrouted if e.id == event.id],
                    )
                )
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                log.exception("router: the outcome of event %s cannot be recorded", event.id)
                error = (
                    f"the router could not record its outcome "
                    f"({type(exc).__name__}: {str(exc)[:300]}); {POISON_HINT}"
                )
                with self.database.transaction() as cursor:
                    gone = outbox.fail(
                        cursor, event.id, worker=self.config.worker, give_up=True, error=error
                    )
                if gone:
                    self._report([Death(event, "unrecordable", error)])

    def _write_verdict(
        self, verdict: Verdict, recorded: list[Attempt], unrouted: list[StoredEvent]
    ) -> list[Death]:
        """Write it in one transaction; the events it made dead (once committed)."""
        deaths: list[Death] = []
        unreadable = {a.event.id for a in recorded if a.destination == "(router)"}
        no_route = {event.id for event in unrouted}
        with self.database.transaction() as cursor:
            if verdict.acked:
                outbox.ack(cursor, verdict.acked, worker=self.config.worker)
            for event, error, retry_at in verdict.failed:
                status = outbox.fail(
                    cursor,
                    event.id,
                    worker=self.config.worker,
                    error=error,
                    retry_delays=self.config.retry_delays,
                    retry_at=moment(retry_at),
                )
                if status == "dead":
                    deaths.append(Death(event, "attempts_exhausted", error))
            for event, error in verdict.dead:
                if outbox.fail(cursor, event.id, worker=self.config.worker, error=error, give_up=True):
                    reason = (
                        "no_route"
                        if event.id in no_route
                        else "unreadable"
                        if event.id in unreadable
                        else "refused"
                    )
                    deaths.append(Death(event, reason, error))
            for available_at, ids in _group_releases(verdict.released).items():
                outbox.release(cursor, ids, worker=self.config.worker, available_at=moment(available_at))
            record_attempts(cursor, self.config.worker, recorded, unrouted)
        return deaths

    def _report(self, deaths: list[Death]) -> None:
        if self.on_dead is None:
            return
        for death in deaths:
            try:
                self.on_dead(death)
            except Exception:  # noqa: BLE001 - telling must not undo what was written
                log.exception("router %s: reporting a dead event failed", self.config.worker)


def judge(
    events: list[StoredEvent], attempts: list[Attempt], unrouted: Iterable[StoredEvent] = ()
) -> Verdict:
    """Each event's fate from its attempts: all delivered → ack; any dead → dead; any failed →
    retry (at the latest Retry-After); otherwise deferred or not started → handed back. A routed
    event with no attempt is acked (every destination took it on an earlier attempt); an
    unrouted one is left to the caller."""
    verdict = Verdict()
    by_event: dict[uuid.UUID, list[Attempt]] = {event.id: [] for event in events}
    for attempt in attempts:
        by_event[attempt.event.id].append(attempt)
    no_route = {event.id for event in unrouted}
    for event in events:
        mine = by_event[event.id]
        if not mine:
            if event.id not in no_route:
                verdict.acked.append(event.id)
            continue
        outcomes = {attempt.outcome for attempt in mine}
        if outcomes == {"delivered"}:
            verdict.acked.append(event.id)
            continue
        errors = "; ".join(f"{a.destination}: {a.error}" for a in mine if a.error)
        if "dead" in outcomes:
            verdict.dead.append((event, errors))
        elif "failed" in outcomes:
            retry_ats = [a.retry_at for a in mine if a.retry_at is not None]
            verdict.failed.append((event, errors, max(retry_ats) if retry_ats else None))
        else:
            retry_ats = [a.retry_at for a in mine if a.retry_at is not None]
            verdict.released.append((event.id, max(retry_ats) if retry_ats else None))
    return verdict


# One attempt as record_attempts writes it: event id, attempt number, HTTP status, error, ms.
_AttemptRow = tuple[uuid.UUID, int, int | None, str | None, float]


def record_attempts(
    cursor: Any, worker: str, attempts: Iterable[Attempt], unrouted: Iterable[StoredEvent]
) -> None:
    """Write the batch's attempts in one round trip: an INSERT per (destination, outcome), its
    per-attempt columns as array literals. (COPY through a session table cost PostgreSQL 2 µs
    more per attempt; adapting lists costs psycopg2 about 1 µs per element.)"""
    groups: dict[tuple[str, str], list[_AttemptRow]] = {}
    for a in attempts:
        groups.setdefault((a.destination, a.outcome), []).append(
            (a.event.id, a.event.attempts, a.http_status, a.error, a.duration_ms)
        )
    for event in unrouted:
        groups.setdefault(("(none)", "unrouted"), []).append(
            (event.id, event.attempts, None, NO_ROUTE_ERROR + event.event_type, 0.0)
        )
    statements = [
        cursor.mogrify(SQL["record_attempts"], _attempt_columns(worker, destination, outcome, rows))
        for (destination, outcome), rows in groups.items()
    ]
    if statements:
        cursor.execute(b";\n".join(statements))


def _attempt_columns(
    worker: str, destination: str, outcome: str, rows: list[_AttemptRow]
) -> dict[str, str]:
    return {
        "worker": storable_text(worker),
        "destination": storable_text(destination),
        "outcome": outcome,
        "event_ids": _array(row[0].hex for row in rows),
        "attempts": _array(str(int(row[1])) for row in rows),
        "http_status": _array(_array_number(row[2]) for row in rows),
        "errors": _array(_array_text(row[3]) for row in rows),
        "durations_ms": _array(repr(float(row[4])) for row in rows),
    }


def _array(elements: Iterable[str]) -> str:
    return "{" + ",".join(elements) + "}"


def _array_number(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))


def _array_text(value: str | None) -> str:
    """An element of an array literal: always quoted, so the text NULL stays text."""
    if value is None:
        return "NULL"
    return '"' + storable_text(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _group_releases(
    released: list[tuple[uuid.UUID, float | None]],
) -> dict[float | None, list[uuid.UUID]]:
    groups: dict[float | None, list[uuid.UUID]] = {}
    for event_id, available_at in released:
        groups.setdefault(available_at, []).append(event_id)
    return groups


def moment(epoch_seconds: float | None) -> datetime | None:
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(min(max(epoch_seconds, 0.0), LATEST_EPOCH_SECONDS), timezone.utc)
