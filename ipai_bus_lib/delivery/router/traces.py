"""The router's spans, as OpenTelemetry's messaging conventions name them: a ``process`` span per
claimed event (from its claim until its fate is written) under the context the event came with,
a delivery span per attempt under it (``POST`` for HTTP destinations, ``send <destination>`` for
brokers) whose context the destination passes on, and a ``settle`` span per event for the
transaction that wrote its fate.

Without OpenTelemetry (or with export off) nothing is recorded and every destination passes on
the event's stored context unchanged.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit

from ...core import tracing
from ...core.stored_event import StoredEvent
from ..destinations import Destination
from .planning import Attempt

# The outcome each verdict list stands for, as the settle span's operation name says it.
_SETTLED = (("acked", "ack"), ("failed", "retry"), ("dead", "dead"), ("released", "release"))
_NO_SPAN = nullcontext()  # reusable: it holds no state


class EventTraces:
    """The spans of the events one router holds; thread-safe (delivering runs in a pool)."""

    def __init__(self, tracer: tracing.Tracer | None = None) -> None:
        self.tracer = tracer or tracing.tracer()
        self.enabled = self.tracer.enabled
        self._spans: dict[uuid.UUID, tracing.Span] = {}
        self._lock = threading.Lock()

    def claimed(self, events: list[StoredEvent], claimed_ns: int) -> None:
        """Start each event's ``process`` span at its claim."""
        if not self.enabled:
            return
        started = {
            event.id: self.tracer.start(
                f"process {tracing.BUS_DESTINATION}",
                "consumer",
                event.trace,
                {
                    **tracing.messaging("process"),
                    tracing.ATTR_MESSAGE_ID: str(event.id),
                    tracing.ATTR_EVENT_TYPE: event.event_type,
                    "ipai_bus.attempt": event.attempts,
                },
                start_ns=claimed_ns,
            )
            for event in events
        }
        with self._lock:
            self._spans.update(started)

    def delivering(self, attempt: Attempt, destination: Destination) -> AbstractContextManager[None]:
        """Around one attempt: its delivery span, whose context the destination passes on."""
        if not self.enabled:
            return _NO_SPAN  # a generator's context manager per attempt cost 1 µs
        return self._delivery_span(attempt, destination)

    @contextmanager
    def _delivery_span(self, attempt: Attempt, destination: Destination) -> Iterator[None]:
        with self._lock:
            parent = self._spans.get(attempt.event.id)
        name, kind, attributes = _delivery_span(attempt.destination, destination)
        span = self.tracer.start(name, kind, parent or attempt.event.trace, attributes)
        try:
            with tracing.propagating(span.context):
                yield
        finally:
            if kind == "client":
                span.set("http.response.status_code", attempt.http_status)
            span.set("ipai_bus.outcome", attempt.outcome)
            if attempt.outcome in ("failed", "dead"):
                span.fail(str(attempt.http_status or attempt.outcome), (attempt.error or "")[:200])
            span.end()

    def settled(self, verdict: Any, started_ns: int, ended_ns: int) -> None:
        """Each event's ``settle`` span (the transaction that wrote its fate), then the end of
        its ``process`` span, failed when it is to be retried or went dead."""
        if not self.enabled:
            return
        for field, operation in _SETTLED:
            for item in getattr(verdict, field):
                event_id = item if isinstance(item, uuid.UUID) else item[0]
                event_id = event_id.id if isinstance(event_id, StoredEvent) else event_id
                self._settle(event_id, operation, item, started_ns, ended_ns)

    def _settle(
        self, event_id: uuid.UUID, operation: str, item: Any, started_ns: int, ended_ns: int
    ) -> None:
        with self._lock:
            process = self._spans.pop(event_id, None)
        if process is None:
            return
        settle = self.tracer.start(
            f"settle {tracing.BUS_DESTINATION}",
            "client",
            process,
            tracing.messaging("settle", operation),
            start_ns=started_ns,
        )
        settle.end(ended_ns)
        process.set("ipai_bus.outcome", operation)
        if operation in ("retry", "dead"):
            process.fail(operation, str(item[1])[:200])
        process.end(ended_ns)

    def forget(self, events: list[StoredEvent]) -> None:
        """End the spans of events whose fate was not written (their leases will bring them back)."""
        if not self.enabled:
            return
        with self._lock:
            left = [self._spans.pop(event.id) for event in events if event.id in self._spans]
        for span in left:
            span.set("ipai_bus.outcome", "lease")
            span.end()


def _delivery_span(name: str, destination: Destination) -> tuple[str, str, dict[str, Any]]:
    """(span name, kind, attributes) of an attempt on ``destination``: a broker's ``send``, or an
    HTTP ``POST`` (the host only: a URL's path may hold a token)."""
    system = getattr(destination, "messaging_system", None)
    if system is not None:
        attributes = {
            tracing.ATTR_SYSTEM: system,
            tracing.ATTR_OPERATION_TYPE: "send",
            tracing.ATTR_OPERATION_NAME: "publish",
            tracing.ATTR_DESTINATION: name,
        }
        return f"send {name}", "producer", attributes
    url = getattr(destination, "url", None)
    attributes = {"ipai_bus.destination": name}
    if isinstance(url, str):
        parts = urlsplit(url)
        attributes.update(
            {"http.request.method": "POST", "server.address": parts.hostname, "server.port": parts.port}
        )
        return "POST", "client", attributes
    return f"deliver {name}", "client", attributes
