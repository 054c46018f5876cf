"""The router's Prometheus metrics: deliveries and failures by destination and event type, how
long deliveries take, claim batch sizes, breaker states and the outbox's lag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ...core.errors import DatabaseError
from ...storage.db import Database
from ...storage.queries import load
from ..destinations import CircuitBreaker
from .planning import Attempt
from .settling import DEATH_REASONS, Death

SQL = load("router")
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
LAG_REFRESH_SECONDS = 5.0


class RouterMetrics:
    """What one router counts; ``render()`` gives the Prometheus text format."""

    def __init__(self, database: Database, breakers: Callable[[], Mapping[str, CircuitBreaker]]):
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "ipai_router_deliveries",
            "Delivery attempts by destination, event type and outcome"
            " (delivered, failed, dead, deferred)",
            ["destination", "event_type", "outcome"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "ipai_router_delivery_seconds",
            "How long a delivery took, by destination",
            ["destination"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.dead_events = Counter(
            "ipai_router_dead_events",
            "Events this router gave up on, by reason (refused, no_route, unreadable,"
            " attempts_exhausted, unrecordable)",
            ["reason"],
            registry=self.registry,
        )
        for reason in DEATH_REASONS:  # each series from the start: increase() sees the first one
            self.dead_events.labels(reason)
        self.claim_batch = Histogram(
            "ipai_router_claim_batch_size",
            "Events per claimed batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(database, breakers))

    def observe_claim(self, events: int) -> None:
        """Count one claimed batch of ``events``."""
        if events:
            self.claim_batch.observe(events)

    def observe_attempts(self, attempts: Iterable[Attempt]) -> None:
        """Count each started attempt by destination, type and outcome, and time it."""
        for attempt in attempts:
            if attempt.outcome == "not_started":
                continue
            self.deliveries.labels(attempt.destination, attempt.event.event_type, attempt.outcome).inc()
            if attempt.outcome in ("delivered", "failed", "dead") and attempt.destination != "(router)":
                self.delivery_seconds.labels(attempt.destination).observe(attempt.duration_ms / 1000)

    def observe_death(self, death: Death) -> None:
        """Count one event gone dead by its reason."""
        self.dead_events.labels(death.reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    """Breaker states (read from memory) and the outbox lag (read from the database at most
    every LAG_REFRESH_SECONDS, however often Prometheus scrapes)."""

    def __init__(self, database: Database, breakers: Callable[[], Mapping[str, CircuitBreaker]]) -> None:
        self.database, self.breakers = database, breakers
        self._lag: float | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        open_ = GaugeMetricFamily(
            "ipai_router_breaker_open",
            "1 while a destination is paused (circuit open or trial running), else 0",
            labels=["destination"],
        )
        for name, breaker in sorted(self.breakers().items()):
            open_.add_metric([name], 0.0 if breaker.open_until is None else 1.0)
        yield open_
        lag = self._current_lag()
        if lag is not None:
            yield GaugeMetricFamily(
                "ipai_outbox_lag_seconds",
                "How long the oldest due event has waited for delivery (0 when none waits)",
                value=lag,
            )

    def _current_lag(self) -> float | None:
        with self._lock:
            if time.monotonic() - self._read_at < LAG_REFRESH_SECONDS:
                return self._lag
            try:
                with self.database.autocommit() as cursor:
                    cursor.execute(SQL["outbox_lag_seconds"])
                    seconds = cursor.fetchone()[0]
                self._lag = float(seconds or 0.0)
            except DatabaseError:
                self._lag = None
            self._read_at = time.monotonic()
            return self._lag
