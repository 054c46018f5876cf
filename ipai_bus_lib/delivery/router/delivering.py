"""Delivering a batch's attempts: concurrently, within rate limits, through circuit breakers
whose state is kept in the database for `status` to show."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from ...core.errors import DatabaseUnavailable
from ...core.storability import storable_text
from ...storage.db import Database
from ...storage.queries import load
from ..destinations import CircuitBreaker, DeliveryFailed, Destination, TokenBucket
from .config import RouterConfig
from .planning import Attempt
from .settling import moment
from .traces import EventTraces

log = logging.getLogger("ipai_bus.router")
SQL = load("router")
# How often a router asks whether an operator resumed a destination it holds paused.
RESUME_CHECK_SECONDS = 1.0


class Deliverer:
    """Makes the attempts; a stop request leaves the unstarted ones ``not_started``."""

    def __init__(
        self,
        config: RouterConfig,
        database: Database,
        destinations: Mapping[str, Destination],
        rate_limits: Mapping[str, TokenBucket],
        stopping: threading.Event,
        traces: EventTraces | None = None,
    ) -> None:
        self.config, self.database, self.stopping = config, database, stopping
        self.traces = traces or EventTraces()
        self.destinations = dict(destinations)
        self.rate_limits = dict(rate_limits)
        self.breakers = {
            name: CircuitBreaker(
                config.breaker_threshold,
                config.breaker_cooldown_seconds,
                on_change=self._breaker_changed(name),
            )
            for name in self.destinations
        }
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="deliver")
        self._resume_checked: dict[str, float] = {}
        self._resume_lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for destination in self.destinations.values():
            destination.close()

    def deliver_all(self, attempts: list[Attempt]) -> None:
        """Concurrently, up to the configured width; inline when nothing waits on the network."""
        attempts = [attempt for attempt in attempts if attempt.outcome == "pending"]
        if len(attempts) == 1 or not any(
            self.destinations[a.destination].waits_on_network for a in attempts
        ):
            for attempt in attempts:
                self._deliver(attempt)
            return
        for future in [self.pool.submit(self._deliver, attempt) for attempt in attempts]:
            future.result()

    def _deliver(self, attempt: Attempt) -> None:
        if self.stopping.is_set():
            attempt.outcome = "not_started"
            return
        breaker = self.breakers[attempt.destination]
        paused_until = breaker.paused_until()
        if paused_until is not None and self._resume_requested(attempt.destination, breaker):
            paused_until = breaker.paused_until()
        if paused_until is not None:
            attempt.outcome, attempt.retry_at = "deferred", paused_until
            attempt.error = f"destination {attempt.destination} paused (circuit open)"
            return
        with self.traces.delivering(attempt, self.destinations[attempt.destination]):
            self._attempt(attempt, breaker)

    def _attempt(self, attempt: Attempt, breaker: CircuitBreaker) -> None:
        started = time.perf_counter()
        try:
            if attempt.destination in self.rate_limits:
                self.rate_limits[attempt.destination].acquire()
            attempt.http_status = self.destinations[attempt.destination].deliver(
                attempt.event, attempt.message
            )
            attempt.outcome = "delivered"
            breaker.record_success()
        except DeliveryFailed as exc:
            attempt.error, attempt.http_status = storable_text(str(exc)), exc.http_status
            attempt.outcome = "failed" if exc.retryable else "dead"
            if exc.retry_after_seconds is not None:
                attempt.retry_at = time.time() + exc.retry_after_seconds
            if exc.http_status == 429:
                breaker.record_throttled(attempt.retry_at)
            elif exc.retryable:
                breaker.record_failure(attempt.error)
            else:  # the destination answered: it is up, the event is what it refused
                breaker.record_success()
        except Exception as exc:  # noqa: BLE001 - a destination bug must not kill the router
            log.exception("router: destination %s raised", attempt.destination)
            attempt.outcome = "failed"
            attempt.error = storable_text(f"{type(exc).__name__}: {exc}")
            breaker.record_failure(attempt.error)
        finally:
            attempt.duration_ms = (time.perf_counter() - started) * 1000

    def _resume_requested(self, name: str, breaker: CircuitBreaker) -> bool:
        """Whether an operator asked to resume ``name`` since its breaker opened; the database
        is asked at most once per RESUME_CHECK_SECONDS per destination, however many wait."""
        with self._resume_lock:
            now = time.monotonic()
            if now - self._resume_checked.get(name, float("-inf")) < RESUME_CHECK_SECONDS:
                return False
            self._resume_checked[name] = now
        try:
            with self.database.autocommit() as cursor:
                cursor.execute(SQL["resume_requested_at"], {"name": name})
                row = cursor.fetchone()
        except DatabaseUnavailable:
            return False
        if row is None or row[0] is None or not breaker.resume(float(row[0])):
            return False
        log.warning("destination %s resumed by an operator: the next delivery is the trial", name)
        return True

    def _breaker_changed(self, name: str) -> Callable[[str, float | None, str | None], None]:
        def changed(state: str, open_until: float | None, error: str | None) -> None:
            log.warning(
                "destination %s circuit %s%s",
                name,
                state,
                f" until {moment(open_until)}: {error}" if open_until else "",
            )
            try:
                with self.database.transaction() as cursor:
                    cursor.execute(
                        SQL["save_breaker_state"],
                        {
                            "name": name,
                            "state": state,
                            "until": moment(open_until),
                            "failures": self.breakers[name].failures,
                            "error": error,
                        },
                    )
            except DatabaseUnavailable:
                pass  # the breaker works in memory; status shows it once the database is back

        return changed
