"""Outbox access: thin typed wrappers over the statements of sql/outbox.sql, which call the
integration schema's SQL functions (defined in the migrations).

Each function takes a psycopg2 cursor, so the caller decides what one transaction covers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
from psycopg2.extras import Json

from ..core import exact_json
from ..core.contract import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAYS_SECONDS
from ..core.envelope import Envelope
from ..core.signing import Verified
from ..core.stored_event import StoredEvent
from ..core.tracing import TraceContext
from .queries import load

# What an event in the outbox is, as integration.outbox_state reports it (processing: named by a
# live lease; the row itself stays pending or failed); a delivered event leaves the outbox and
# is then "completed" (integration.event_state, the status of every logged event).
STATUSES = ("pending", "processing", "failed", "dead")
EVENT_STATUSES = ("pending", "processing", "completed", "failed", "dead")
SQL = load("outbox")


@dataclass(frozen=True)
class InsertResult:
    """The answer of insert_outbox_event: the event's id, and whether it was already stored."""

    event_id: uuid.UUID
    duplicate: bool


def _signed_parameters(signature_digest: str | None, signed: Verified | None) -> dict:
    """The request as signed and its header's digests, kept beside the audit copy so the
    signature can be re-verified from the database alone (integration.signed_message)."""
    return {
        "digest": signature_digest,
        "message": None if signed is None else psycopg2.Binary(signed.message),
        "signatures": None if signed is None else signed.signatures,
    }


def record_event(
    cursor: Any,
    envelope: Envelope,
    *,
    idempotency_key: str,
    signature_digest: str | None = None,
    signed: Verified | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    trace: TraceContext | None = None,
) -> InsertResult:
    """Store a new event, its audit copy and the request it was signed in (what an ingress
    does), in one statement; a duplicate writes nothing. A signature digest already accepted
    under another key raises ReplayedSignature. ``trace`` is kept for the router to continue."""
    cursor.execute(
        SQL["record_event"],
        {
            "event_type": envelope.event_type,
            "aggregate_type": envelope.aggregate_type,
            "aggregate_id": envelope.aggregate_id,
            "payload": Json(dict(envelope.payload), dumps=exact_json.dumps),
            "idempotency_key": idempotency_key,
            "source": envelope.source,
            "occurred_at": envelope.occurred_at,
            "max_attempts": max_attempts,
            "traceparent": trace.traceparent if trace else None,
            "tracestate": trace.tracestate if trace else None,
            **_signed_parameters(signature_digest, signed),
        },
    )
    event_id, duplicate, _kept = cursor.fetchone()
    return InsertResult(event_id=event_id, duplicate=duplicate)


def record_batch(
    cursor: Any,
    events: Sequence[tuple[Envelope, str]],
    *,
    batch_key: str,
    signature_digest: str,
    signed: Verified | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    positions: Sequence[int] | None = None,
    traces: Sequence[TraceContext | None] | None = None,
) -> list[InsertResult]:
    """Store checked (envelope, idempotency key) pairs and their audit copies in one statement
    (one round trip, one transaction); results in the same order.

    ``positions`` are the events' places in the signed batch body, when some of its events were
    left out (refused); each event's signature digest names its place there. ``traces`` are
    the events' trace contexts, kept for the router to continue.
    A key already stored, or repeated earlier in ``events``, is a duplicate and writes nothing.
    A signature digest already accepted under another batch key raises ReplayedSignature.
    """
    places = range(len(events)) if positions is None else positions
    contexts = traces if traces is not None else [None] * len(events)
    document = [
        {
            **envelope.to_json(),
            "idempotency_key": key,
            "batch_position": place,
            **(trace.fields() if trace else {}),
        }
        for (envelope, key), place, trace in zip(events, places, contexts)
    ]
    cursor.execute(
        SQL["record_batch"],
        {
            "batch_key": batch_key,
            "events": Json(document, dumps=exact_json.dumps),
            "max_attempts": max_attempts,
            **_signed_parameters(signature_digest, signed),
        },
    )
    rows = sorted(cursor.fetchall())
    return [InsertResult(event_id=event_id, duplicate=duplicate) for _, event_id, duplicate in rows]


def claim(
    cursor: Any,
    *,
    worker: str,
    limit: int = 25,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> list[StoredEvent]:
    """Lease up to ``limit`` due events to ``worker`` (each claim counts one attempt)."""
    cursor.execute(
        SQL["claim"],
        {"worker": worker, "limit": limit, "lease": lease_seconds},
    )
    return [StoredEvent(*row) for row in cursor.fetchall()]


def uuid_array(ids: Iterable[uuid.UUID]) -> str:
    """``ids`` as one PostgreSQL array literal for ``::uuid[]`` (hex digits are valid uuid input):
    a fourth of the time psycopg2 takes to adapt a list of UUID objects one by one."""
    return "{" + ",".join(event_id.hex for event_id in ids) + "}"


def ack(cursor: Any, event_ids: Sequence[uuid.UUID], *, worker: str) -> int:
    """Complete delivered events (their outbox rows go); returns how many ``worker`` still held."""
    cursor.execute(
        SQL["ack"],
        {"ids": uuid_array(event_ids), "worker": worker},
    )
    return int(cursor.fetchone()[0])


def fail(
    cursor: Any,
    event_id: uuid.UUID,
    *,
    worker: str,
    error: str,
    retry_delays: Sequence[int] = DEFAULT_RETRY_DELAYS_SECONDS,
    retry_at: datetime | None = None,
    give_up: bool = False,
) -> str | None:
    """Record a failed delivery; returns the new status ('failed' or 'dead'), or None when
    ``worker`` no longer held the event."""
    cursor.execute(
        SQL["fail"],
        {
            "id": event_id,
            "worker": worker,
            "error": error,
            "delays": list(retry_delays),
            "retry_at": retry_at,
            "give_up": give_up,
        },
    )
    status = cursor.fetchone()[0]
    return str(status) if status is not None else None


def extend_leases(
    cursor: Any,
    event_ids: Sequence[uuid.UUID],
    *,
    worker: str,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> int:
    """Renew the leases ``worker`` still holds on ``event_ids``; returns how many it renewed."""
    cursor.execute(
        SQL["extend_leases"],
        {"ids": uuid_array(event_ids), "worker": worker, "lease": lease_seconds},
    )
    return int(cursor.fetchone()[0])


def release(
    cursor: Any, event_ids: Sequence[uuid.UUID], *, worker: str, available_at: datetime | None = None
) -> int:
    """Hand claimed, unstarted events back with their attempt given back: due at once, or at
    ``available_at`` (a paused destination's reopening)."""
    cursor.execute(
        SQL["release"],
        {"ids": uuid_array(event_ids), "worker": worker, "available_at": available_at},
    )
    return int(cursor.fetchone()[0])
