"""An event as the bus stored it: what a router claims and every destination is handed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .tracing import TraceContext


@dataclass(frozen=True)
class StoredEvent:
    """One outbox row as claim_outbox hands it to a worker.

    ``id`` is the event's identity everywhere downstream: HTTP forwards send it as
    ``webhook-id``, the same on every retry, so a destination de-duplicates on it. The sender's
    idempotency key stays at the bus (outbox and event_log), where ingest de-duplicates on it;
    no destination needs it, so a claim does not read it."""

    id: uuid.UUID
    source: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    available_at: datetime
    created_at: datetime
    occurred_at: datetime | None = None
    locked_by: str | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def trace(self) -> TraceContext | None:
        """The W3C trace context the event came with (checked when it was stored), if any."""
        return TraceContext(self.traceparent, self.tracestate) if self.traceparent else None
