"""Planning a claimed batch: which destinations each event goes to, with what message, and
which events cannot be delivered at all (parked dead with the reason)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from ...core.stored_event import StoredEvent
from ...storage.db import Database, UnreadableValue
from ...storage.queries import load
from ..destinations import Destination
from ..formatters import Message, format_event
from ..routes import Route, RoutingTable
from .config import RouterConfig

log = logging.getLogger("ipai_bus.router")
SQL = load("router")
POISON_HINT = "fix the data or the routes, then `ipai-bus retry` it (or purge it)"


@dataclass
class Attempt:
    """One (event, destination) delivery try and how it ended."""

    event: StoredEvent
    destination: str
    outcome: str = "pending"  # delivered | failed | dead | deferred | not_started
    http_status: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    retry_at: float | None = None
    message: Message | None = None


class Planner:
    """Turns claimed events into attempts, one per (event, destination) still to reach."""

    def __init__(
        self,
        config: RouterConfig,
        database: Database,
        routing: RoutingTable,
        destinations: Mapping[str, Destination],
    ) -> None:
        self.config, self.database, self.routing = config, database, routing
        self.destinations = destinations

    def plan(self, events: list[StoredEvent]) -> tuple[list[Attempt], list[StoredEvent]]:
        """The attempts a claimed batch needs, one per (event, destination) not yet delivered,
        each with its formatted message or the reason it cannot be sent (unreadable, cannot be
        formatted); and the events no route matches. Reads which pairs an earlier attempt
        delivered, so a retried event never reaches a destination twice."""
        by_type = {name: self.routing.route_for(name) for name in {e.event_type for e in events}}
        # A retried event, or one with several destinations (handed back part-way by a stopping
        # router, its attempt given back), may have reached some destinations already.
        done = self._already_delivered(
            [
                event.id
                for event in events
                if event.attempts > 1 or len(getattr(by_type[event.event_type], "destinations", ())) > 1
            ]
        )
        attempts: list[Attempt] = []
        unrouted: list[StoredEvent] = []
        for event in events:
            route = by_type[event.event_type]
            if route is None:
                unrouted.append(event)
                continue
            try:
                problem = unreadable_reason(event)
                message = None if problem else self._message(event, route)
            except Exception as exc:  # noqa: BLE001 - one event's data must not stop the batch
                log.exception("router: event %s cannot be formatted", event.id)
                problem = f"the router cannot format it ({type(exc).__name__}: {exc})"
            if problem:
                attempts.append(
                    Attempt(event, "(router)", outcome="dead", error=f"{problem[:500]}; {POISON_HINT}")
                )
                continue
            attempts += [
                Attempt(event, name, message=message)
                for name in route.destinations
                if not done or (event.id, name) not in done
            ]
        return attempts, unrouted

    def _message(self, event: StoredEvent, route: Route) -> Message | None:
        if not any(self.destinations[name].needs_message for name in route.destinations):
            return None
        return format_event(
            event.event_type,
            event.payload,
            formatter=route.formatter,
            odoo_base_url=self.config.odoo_base_url,
        )

    def _already_delivered(self, event_ids: list[uuid.UUID]) -> set[tuple[uuid.UUID, str]]:
        """(event, destination) pairs delivered on an earlier attempt: not sent twice."""
        if not event_ids:
            return set()
        with self.database.autocommit() as cursor:
            cursor.execute(SQL["delivered_pairs"], {"ids": event_ids})
            return {(event_id, name) for event_id, name in cursor.fetchall()}


def unreadable_reason(event: StoredEvent) -> str | None:
    """Why an event's stored data cannot be delivered (None when it can)."""
    if isinstance(event.payload, UnreadableValue):
        return f"its payload cannot be read ({event.payload.reason})"
    if not isinstance(event.payload, dict):
        return "its payload is not a JSON object"
    return None
