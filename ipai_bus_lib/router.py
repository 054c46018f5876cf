"""The router: claims events from the outbox, delivers them to their routes' destinations, and
acknowledges, retries or buries each one — recording every attempt.

Any number of routers may run against one database; claim_outbox's SKIP LOCKED and leases keep
them apart, and its per-aggregate ordering keeps each record's events in the order accepted. A
router wakes on the outbox NOTIFY and polls only as a fallback.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import outbox
from .db import Database, UnreadableValue, connect
from .destinations import CircuitBreaker, DeliveryFailed, Destination, TokenBucket
from .errors import DatabaseUnavailable
from .formatters import Message, format_event
from .outbox import OutboxEvent
from .routes import Route, RoutingTable
from .settings import DEFAULTS

NOTIFY_CHANNEL = "integration_outbox"
# A router's writes (claim, ack, fail, attempts) need not wait for the WAL flush: one lost in a
# database crash only means the event is delivered again, which at-least-once delivery allows.
# The events themselves were committed durably by whoever inserted them.
ROUTER_SESSION_SETTINGS = {"synchronous_commit": "off"}
# The latest moment a datetime can hold with a day to spare: no outside number goes past it.
_LATEST_EPOCH_SECONDS = datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp()
_FIRST_RECONNECT_SECONDS = 0.5
# No batch takes this long to deliver and settle; past it a lease is left to run out, so a bug
# can never pin events to a router for good.
MAX_HOLD_SECONDS = 15 * 60
_POISON_HINT = "fix the data or the routes, then `ipai-bus retry` it (or purge it)"
log = logging.getLogger("ipai_bus.router")


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RouterConfig:
    """How a router claims and delivers (defaults: the bus's; the seed polled 30 s, batch 25)."""

    worker: str = field(default_factory=default_worker_name)
    batch_size: int = DEFAULTS["router_batch_size"]
    lease_seconds: int = DEFAULTS["router_lease_seconds"]
    poll_seconds: float = DEFAULTS["router_poll_seconds"]
    concurrency: int = DEFAULTS["router_concurrency"]
    listen: bool = DEFAULTS["router_listen"]
    # Claim again at once while batches come back full. Off, it takes one batch per poll, as the
    # seed's n8n schedule did (kept for the benchmark's baseline).
    drain: bool = True
    retry_delays: tuple[int, ...] = DEFAULTS["retry_delays"]
    breaker_threshold: int = DEFAULTS["breaker_threshold"]
    breaker_cooldown_seconds: float = DEFAULTS["breaker_cooldown_seconds"]
    odoo_base_url: str | None = None


@dataclass
class Attempt:
    """One (event, destination) delivery try and how it ended."""

    event: OutboxEvent
    destination: str
    outcome: str = "pending"  # delivered | failed | dead | deferred | not_started
    http_status: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    retry_at: float | None = None
    message: Message | None = None


@dataclass
class Verdict:
    """What one claimed event comes to after its attempts."""

    acked: list[uuid.UUID] = field(default_factory=list)
    failed: list[tuple[OutboxEvent, str, float | None]] = field(default_factory=list)
    dead: list[tuple[OutboxEvent, str]] = field(default_factory=list)
    released: list[tuple[uuid.UUID, float | None]] = field(default_factory=list)

    def only(self, event_id: uuid.UUID) -> Verdict:
        """The part of this verdict about one event."""
        return Verdict(
            acked=[i for i in self.acked if i == event_id],
            failed=[f for f in self.failed if f[0].id == event_id],
            dead=[d for d in self.dead if d[0].id == event_id],
            released=[r for r in self.released if r[0] == event_id])


class Router:
    """A worker: ``run()`` until ``stop()``; ``run_once()`` handles one claimed batch."""

    def __init__(self, config: RouterConfig, database: Database, routing: RoutingTable,
                 destinations: Mapping[str, Destination],
                 rate_limits: Mapping[str, TokenBucket] | None = None) -> None:
        self.config, self.database, self.routing = config, database, routing
        self.destinations = dict(destinations)
        self.rate_limits = dict(rate_limits or {})
        self.breakers = {name: CircuitBreaker(config.breaker_threshold,
                                              config.breaker_cooldown_seconds,
                                              on_change=self._breaker_changed(name))
                         for name in self.destinations}
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="deliver")
        # Settling a batch (ack, fail, attempts) runs on its own connection while the next batch
        # is claimed: the database then works on two cores instead of one.
        self._settler = ThreadPoolExecutor(1, thread_name_prefix="settle")
        self._settling: Future[None] | None = None
        self._stopping = threading.Event()
        # Events claimed and not yet settled, and since when: their leases are renewed until
        # they are settled, or until MAX_HOLD_SECONDS if something went wrong.
        self._held: dict[uuid.UUID, float] = {}
        self._held_lock = threading.Lock()
        self._lease_keeper: threading.Thread | None = None

    # --- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end: in-flight deliveries finish, unstarted ones are handed back."""
        self._stopping.set()

    def run(self) -> None:
        """Deliver until stop() is called; survives the database going away and coming back."""
        listener = None
        self._start_lease_keeper()
        backoff = _FIRST_RECONNECT_SECONDS
        try:
            while not self._stopping.is_set():
                try:
                    if listener is None and self.config.listen:
                        listener = self._listen()
                    handled = self._run_pipelined()
                    backoff = _FIRST_RECONNECT_SECONDS
                    if handled < self.config.batch_size or not self.config.drain:
                        self._finish_settling()
                        self._wait_for_work(listener)
                except DatabaseUnavailable as exc:
                    # Soon at first, so delivery resumes within a second or two of the
                    # database's return; then less often, up to the poll interval.
                    log.warning("router %s: %s; retrying in %.1f s", self.config.worker, exc,
                                backoff)
                    _close_quietly(listener)
                    listener = None
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, self.config.poll_seconds)
                except Exception:  # noqa: BLE001 - the router outlives its own bugs
                    # Whatever it was, the claimed events' leases run out and they come back
                    # (and go dead once their attempts are spent): the others keep flowing.
                    log.exception("router %s: unexpected error; going on in %.0f s",
                                  self.config.worker, self.config.poll_seconds)
                    _close_quietly(listener)
                    listener = None
                    self._stopping.wait(self.config.poll_seconds)
        finally:
            _close_quietly(listener)
            self._finish_settling(quietly=True)
            self._settler.shutdown(wait=True)
            self.pool.shutdown(wait=True)
            for destination in self.destinations.values():
                destination.close()

    def _listen(self) -> Any:  # a psycopg2 connection in autocommit, LISTENing
        listener = connect(self.database.dsn, application_name="ipai-bus router listener")
        listener.autocommit = True
        with listener.cursor() as cursor:
            cursor.execute(f"listen {NOTIFY_CHANNEL}")
        return listener

    def _start_lease_keeper(self) -> None:
        if self._lease_keeper is None or not self._lease_keeper.is_alive():
            self._lease_keeper = threading.Thread(target=self._keep_leases, daemon=True,
                                                  name="lease-keeper")
            self._lease_keeper.start()

    def _keep_leases(self) -> None:
        """Renew held leases every third of a lease, so none runs out under a delivery."""
        interval = max(self.config.lease_seconds / 3, 0.5)
        while not self._stopping.wait(interval):
            oldest = time.monotonic() - MAX_HOLD_SECONDS
            with self._held_lock:
                held = [event_id for event_id, since in self._held.items() if since > oldest]
            if not held:
                continue
            try:
                with self.database.autocommit() as cursor:
                    outbox.extend_leases(cursor, held, worker=self.config.worker,
                                         lease_seconds=self.config.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("router %s: could not renew %d lease(s): %s", self.config.worker,
                            len(held), exc)

    def _hold(self, events: list[OutboxEvent]) -> None:
        now = time.monotonic()
        with self._held_lock:
            self._held.update((event.id, now) for event in events)

    def _let_go(self, events: list[OutboxEvent]) -> None:
        with self._held_lock:
            for event in events:
                self._held.pop(event.id, None)

    def _wait_for_work(self, listener: Any) -> None:
        timeout = self.config.poll_seconds
        if self.config.drain:  # wake for the next scheduled retry rather than the next poll
            timeout = min(timeout, self._seconds_until_next_due())
        if listener is None:
            self._stopping.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices, so a stop request is noticed within 0.2 s.
            readable, _, _ = select.select([listener], [], [], min(remaining, 0.2))
            if readable:
                listener.poll()
                if listener.notifies:
                    listener.notifies.clear()
                    return

    def _seconds_until_next_due(self) -> float:
        with self.database.autocommit() as cursor:
            cursor.execute("select extract(epoch from min(available_at) - now())"
                           " from integration.outbox where status in ('pending', 'failed')")
            seconds = cursor.fetchone()[0]
        return self.config.poll_seconds if seconds is None else max(0.0, float(seconds))

    # --- one batch ----------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one batch, deliver it, settle it; returns how many events were claimed."""
        events, attempts, unrouted = self._claim_and_deliver()
        if events:
            self._settle(events, attempts, unrouted)
        return len(events)

    def _run_pipelined(self) -> int:
        """As run_once, but the batch is settled in the background while the next is claimed."""
        events, attempts, unrouted = self._claim_and_deliver()
        try:
            self._finish_settling()
        finally:  # even when the previous batch could not be settled, this one is
            if events:
                self._settling = self._settler.submit(self._settle, events, attempts, unrouted)
        return len(events)

    def _finish_settling(self, *, quietly: bool = False) -> None:
        settling, self._settling = self._settling, None
        if settling is None:
            return
        try:
            settling.result()
        except DatabaseUnavailable:
            if not quietly:
                raise  # the batch's leases run out and its events come back: nothing is lost

    def _claim_and_deliver(self) -> tuple[list[OutboxEvent], list[Attempt], list[OutboxEvent]]:
        with self.database.transaction() as cursor:
            events = outbox.claim(cursor, worker=self.config.worker,
                                  limit=self.config.batch_size,
                                  lease_seconds=self.config.lease_seconds)
        if not events:
            return [], [], []
        self._hold(events)
        try:
            attempts, unrouted = self._plan(events)
            self._deliver_all(attempts)
        except BaseException:
            self._let_go(events)  # their leases run out and they come back
            raise
        return events, attempts, unrouted

    def _plan(self, events: list[OutboxEvent]) -> tuple[list[Attempt], list[OutboxEvent]]:
        routes = {event.id: self.routing.route_for(event.event_type) for event in events}
        # A retried event, or one with several destinations (handed back part-way by a stopping
        # router, its attempt given back), may have reached some destinations already.
        done = self._already_delivered([
            event.id for event in events
            if event.attempts > 1 or len(getattr(routes[event.id], "destinations", ())) > 1])
        attempts: list[Attempt] = []
        unrouted: list[OutboxEvent] = []
        for event in events:
            route = routes[event.id]
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
                attempts.append(Attempt(event, "(router)", outcome="dead",
                                        error=f"{problem[:500]}; {_POISON_HINT}"))
                continue
            attempts += [Attempt(event, name, message=message) for name in route.destinations
                         if (event.id, name) not in done]
        return attempts, unrouted

    def _message(self, event: OutboxEvent, route: Route) -> Message | None:
        if not any(self.destinations[name].needs_message for name in route.destinations):
            return None
        return format_event(event.event_type, event.payload, formatter=route.formatter,
                            odoo_base_url=self.config.odoo_base_url)

    def _already_delivered(self, event_ids: list[uuid.UUID]) -> set[tuple[uuid.UUID, str]]:
        """(event, destination) pairs delivered on an earlier attempt: not sent twice."""
        if not event_ids:
            return set()
        with self.database.autocommit() as cursor:
            cursor.execute("select event_id, destination from integration.delivery_attempts"
                           " where event_id = any(%(ids)s::uuid[]) and outcome = 'delivered'",
                           {"ids": event_ids})
            return {(event_id, name) for event_id, name in cursor.fetchall()}

    def _deliver_all(self, attempts: list[Attempt]) -> None:
        """Concurrently, up to the configured width; inline when nothing waits on the network."""
        attempts = [attempt for attempt in attempts if attempt.outcome == "pending"]
        if len(attempts) == 1 or not any(self.destinations[a.destination].waits_on_network
                                         for a in attempts):
            for attempt in attempts:
                self._deliver(attempt)
            return
        for future in [self.pool.submit(self._deliver, attempt) for attempt in attempts]:
            future.result()

    def _deliver(self, attempt: Attempt) -> None:
        if self._stopping.is_set():
            attempt.outcome = "not_started"
            return
        breaker = self.breakers[attempt.destination]
        paused_until = breaker.paused_until()
        if paused_until is not None:
            attempt.outcome, attempt.retry_at = "deferred", paused_until
            attempt.error = f"destination {attempt.destination} paused (circuit open)"
            return
        started = time.perf_counter()
        try:
            if attempt.destination in self.rate_limits:
                self.rate_limits[attempt.destination].acquire()
            attempt.http_status = self.destinations[attempt.destination].deliver(
                attempt.event, attempt.message)
            attempt.outcome = "delivered"
            breaker.record_success()
        except DeliveryFailed as exc:
            attempt.error, attempt.http_status = str(exc), exc.http_status
            attempt.outcome = "failed" if exc.retryable else "dead"
            if exc.retry_after_seconds is not None:
                attempt.retry_at = time.time() + exc.retry_after_seconds
            if exc.http_status == 429:
                breaker.record_throttled(attempt.retry_at)
            elif exc.retryable:
                breaker.record_failure(str(exc))
            else:  # the destination answered: it is up, the event is what it refused
                breaker.record_success()
        except Exception as exc:  # noqa: BLE001 - a destination bug must not kill the router
            log.exception("router: destination %s raised", attempt.destination)
            attempt.outcome, attempt.error = "failed", f"{type(exc).__name__}: {exc}"
            breaker.record_failure(attempt.error)
        finally:
            attempt.duration_ms = (time.perf_counter() - started) * 1000

    # --- settling -----------------------------------------------------------------------------

    def _settle(self, events: list[OutboxEvent], attempts: list[Attempt],
                unrouted: list[OutboxEvent]) -> None:
        verdict = judge(events, attempts)
        for event in unrouted:
            verdict.dead.append((event, f"no route matches event type {event.event_type}; add "
                                        "one to the routes file, then `ipai-bus retry`"))
        recorded = [a for a in attempts if a.outcome != "not_started"]
        try:
            self._write_verdict(verdict, recorded, unrouted)
        except DatabaseUnavailable:
            raise  # the leases run out and the events come back: nothing is lost
        except Exception:  # noqa: BLE001 - one event's outcome must not stop the others'
            log.exception("router %s: settling a batch failed; settling its events one by one",
                          self.config.worker)
            self._settle_one_by_one(events, verdict, recorded, unrouted)
        finally:
            self._let_go(events)

    def _settle_one_by_one(self, events: list[OutboxEvent], verdict: Verdict,
                           recorded: list[Attempt], unrouted: list[OutboxEvent]) -> None:
        for event in events:
            try:
                self._write_verdict(verdict.only(event.id),
                                    [a for a in recorded if a.event.id == event.id],
                                    [e for e in unrouted if e.id == event.id])
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                log.exception("router: the outcome of event %s cannot be recorded", event.id)
                with self.database.transaction() as cursor:
                    outbox.fail(cursor, event.id, worker=self.config.worker, give_up=True,
                                error=f"the router could not record its outcome "
                                      f"({type(exc).__name__}: {str(exc)[:300]}); {_POISON_HINT}")

    def _write_verdict(self, verdict: Verdict, recorded: list[Attempt],
                       unrouted: list[OutboxEvent]) -> None:
        with self.database.transaction() as cursor:
            if verdict.acked:
                outbox.ack(cursor, verdict.acked, worker=self.config.worker)
            for event, error, retry_at in verdict.failed:
                outbox.fail(cursor, event.id, worker=self.config.worker, error=error,
                            retry_delays=self.config.retry_delays,
                            retry_at=_moment(retry_at))
            for event, error in verdict.dead:
                outbox.fail(cursor, event.id, worker=self.config.worker, error=error,
                            give_up=True)
            for available_at, ids in _group_releases(verdict.released).items():
                outbox.release(cursor, ids, worker=self.config.worker,
                               available_at=_moment(available_at))
            record_attempts(cursor, self.config.worker, recorded, unrouted)

    def _breaker_changed(self, name: str) -> Callable[[str, float | None, str | None], None]:
        def changed(state: str, open_until: float | None, error: str | None) -> None:
            log.warning("destination %s circuit %s%s", name, state,
                        f" until {_moment(open_until)}: {error}" if open_until else "")
            try:
                with self.database.transaction() as cursor:
                    cursor.execute(
                        "insert into integration.destination_state as s"
                        " (destination, state, failures, open_until, last_error)"
                        " values (%(name)s, %(state)s, %(failures)s, %(until)s, %(error)s)"
                        " on conflict (destination) do update set state = excluded.state,"
                        " failures = excluded.failures, open_until = excluded.open_until,"
                        " last_error = coalesce(excluded.last_error, s.last_error),"
                        " updated_at = now()",
                        {"name": name, "state": state, "until": _moment(open_until),
                         "failures": self.breakers[name].failures, "error": error})
            except DatabaseUnavailable:
                pass  # the breaker works in memory; status shows it once the database is back
        return changed


def judge(events: list[OutboxEvent], attempts: list[Attempt]) -> Verdict:
    """Each event's fate from its attempts: all delivered → ack; any dead → dead; any failed →
    retry (at the latest Retry-After); otherwise deferred or not started → handed back."""
    verdict = Verdict()
    by_event: dict[uuid.UUID, list[Attempt]] = {event.id: [] for event in events}
    for attempt in attempts:
        by_event[attempt.event.id].append(attempt)
    for event in events:
        mine = by_event[event.id]
        if not mine:
            continue  # unrouted, handled by the caller
        outcomes = {attempt.outcome for attempt in mine}
        errors = "; ".join(f"{a.destination}: {a.error}" for a in mine if a.error)
        if outcomes == {"delivered"}:
            verdict.acked.append(event.id)
        elif "dead" in outcomes:
            verdict.dead.append((event, errors))
        elif "failed" in outcomes:
            retry_ats = [a.retry_at for a in mine if a.retry_at is not None]
            verdict.failed.append((event, errors, max(retry_ats) if retry_ats else None))
        else:
            retry_ats = [a.retry_at for a in mine if a.retry_at is not None]
            verdict.released.append((event.id, max(retry_ats) if retry_ats else None))
    return verdict


def record_attempts(cursor: Any, worker: str, attempts: Iterable[Attempt],
                    unrouted: Iterable[OutboxEvent]) -> None:
    """Write the batch's attempts in one call."""
    rows = [(a.event.id, a.event.attempts, a.destination, a.outcome, a.http_status, a.error,
             a.duration_ms) for a in attempts]
    rows += [(event.id, event.attempts, "(none)", "unrouted", None,
              f"no route matches event type {event.event_type}", 0.0) for event in unrouted]
    if not rows:
        return
    columns = list(zip(*rows))
    cursor.execute(
        "select integration.record_delivery_attempts(p_worker => %(worker)s,"
        " p_event_ids => %(ids)s::uuid[], p_attempts => %(attempts)s::integer[],"
        " p_destinations => %(destinations)s::text[], p_outcomes => %(outcomes)s::text[],"
        " p_http_status => %(statuses)s::integer[], p_errors => %(errors)s::text[],"
        " p_durations_ms => %(durations)s::real[])",
        {"worker": worker, "ids": list(columns[0]), "attempts": list(columns[1]),
         "destinations": list(columns[2]), "outcomes": list(columns[3]),
         "statuses": list(columns[4]), "errors": list(columns[5]),
         "durations": list(columns[6])})


def _group_releases(released: list[tuple[uuid.UUID, float | None]]
                    ) -> dict[float | None, list[uuid.UUID]]:
    groups: dict[float | None, list[uuid.UUID]] = {}
    for event_id, available_at in released:
        groups.setdefault(available_at, []).append(event_id)
    return groups


def _moment(epoch_seconds: float | None) -> datetime | None:
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(min(max(epoch_seconds, 0.0), _LATEST_EPOCH_SECONDS), timezone.utc)


def unreadable_reason(event: OutboxEvent) -> str | None:
    """Why an event's stored data cannot be delivered (None when it can)."""
    if isinstance(event.payload, UnreadableValue):
        return f"its payload cannot be read ({event.payload.reason})"
    if not isinstance(event.payload, dict):
        return "its payload is not a JSON object"
    return None


def _close_quietly(connection: Any) -> None:
    if connection is not None:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
