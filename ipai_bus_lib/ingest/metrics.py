"""Prometheus metrics of the receiver: requests by outcome, latency, and the outbox depth.

Under gunicorn every worker process counts its own requests; with PROMETHEUS_MULTIPROC_DIR set
(``ipai-bus serve`` sets it) a scrape of any worker adds up all of them. The outbox depth is read
from the database at most once per ``refresh_seconds`` per process (concurrent scrapes share
that one read), so scrapers cannot load the database however often they come.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.errors import DatabaseError
from ..storage.db import Database
from ..storage.outbox import STATUSES
from ..storage.queries import load

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


DEPTH_REFRESH_SECONDS = 15.0


class OutboxDepthCollector(Collector):
    """``ipai_outbox_events{status=…}``: rows per outbox status, read at most once per
    ``refresh_seconds`` (scrapes in between get the last reading)."""

    def __init__(self, database: Database, refresh_seconds: float = DEPTH_REFRESH_SECONDS) -> None:
        self.database = database
        self.refresh_seconds = refresh_seconds
        self._counts: dict[str, int] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._current_counts()
        if counts is None:
            return
        family = GaugeMetricFamily("ipai_outbox_events", "Outbox rows by status", labels=["status"])
        for status in STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family

    def _current_counts(self) -> dict[str, int] | None:
        with self._lock:  # one reader at a time; the others wait and take its reading
            if time.monotonic() - self._read_at < self.refresh_seconds:
                return self._counts
            try:
                with self.database.transaction() as cursor:
                    cursor.execute(load("receiver")["outbox_depth"])
                    self._counts = dict(cursor.fetchall())
            except DatabaseError:  # unreachable, or a role without the right: no gauge
                self._counts = None
            self._read_at = time.monotonic()
            return self._counts


class ReceiverMetrics:
    """The receiver's counters and histogram, and their rendering in the text format."""

    def __init__(self, database: Database, *, multiprocess: bool = False) -> None:
        # Under `ipai-bus serve`, whose workers share PROMETHEUS_MULTIPROC_DIR: add them all up.
        self._multiprocess = multiprocess
        self._own = CollectorRegistry()
        self.requests = Counter(
            "ipai_receiver_requests", "Webhook requests by outcome", ["outcome"], registry=self._own
        )
        self.latency = Histogram(
            "ipai_receiver_request_seconds",
            "Webhook request latency",
            buckets=LATENCY_BUCKETS,
            registry=self._own,
        )
        self._depth = OutboxDepthCollector(database)

    def observe(self, outcome: str, seconds: float) -> None:
        self.requests.labels(outcome=outcome).inc()
        self.latency.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        registry: Any = self._own
        if self._multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        scrape = CollectorRegistry()
        scrape.register(self._depth)
        return generate_latest(registry) + generate_latest(scrape), CONTENT_TYPE_LATEST
