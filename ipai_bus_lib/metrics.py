"""Prometheus metrics of the receiver: requests by outcome, latency, and the outbox depth.

Under gunicorn every worker process counts its own requests; with PROMETHEUS_MULTIPROC_DIR set
(``ipai-bus serve`` sets it) a scrape of any worker adds up all of them. The outbox depth is read
from the database at scrape time, so it is the same whichever worker answers.
"""

from __future__ import annotations

import os
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

from .db import Database
from .errors import DatabaseUnavailable
from .outbox import STATUSES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OutboxDepthCollector(Collector):
    """``ipai_outbox_events{status=…}``: rows per outbox status, read when scraped."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ipai_outbox_events", "Outbox rows by status",
                                   labels=["status"])
        try:
            with self.database.transaction() as cursor:
                cursor.execute("select status, count(*) from integration.outbox group by status")
                counts = dict(cursor.fetchall())
        except DatabaseUnavailable:
            return
        for status in STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


class ReceiverMetrics:
    """The receiver's counters and histogram, and their rendering in the text format."""

    def __init__(self, database: Database) -> None:
        self._multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._own = CollectorRegistry()
        self.requests = Counter("ipai_receiver_requests", "Webhook requests by outcome",
                                ["outcome"], registry=self._own)
        self.latency = Histogram("ipai_receiver_request_seconds", "Webhook request latency",
                                 buckets=LATENCY_BUCKETS, registry=self._own)
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
