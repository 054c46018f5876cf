"""Batch framing: many events in one signed request, ``{"events": [envelope + key, ...]}``,
posted to the webhook's ``/batch`` sibling; each element is checked as a single event is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import exact_json
from .contract import BATCH_PATH_SUFFIX, MAX_BATCH_EVENTS, MAX_EVENT_BYTES
from .envelope import KEY_RULE, TOO_DEEP, Envelope, is_idempotency_key, parse_envelope
from .errors import BatchTooLarge, EnvelopeError


@dataclass(frozen=True)
class BatchEvent:
    """One element of a batch body: its envelope and idempotency key, or why it was refused."""

    envelope: Envelope | None = None
    idempotency_key: str | None = None
    refusal: str | None = None


def parse_batch(document: Any, *, max_events: int = MAX_BATCH_EVENTS) -> list[BatchEvent]:
    """The elements of a batch body ``{"events": [envelope + "idempotency_key", ...]}``, in order.

    Each element is checked as the single-event path checks its body, with the same reasons; a
    bad element is refused alone. Raises EnvelopeError when the body is not a batch, and
    BatchTooLarge beyond ``max_events``.
    """
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list) or not events:
        raise EnvelopeError(
            'body must be a JSON object {"events": [...]} with at least one event', field="events"
        )
    if len(events) > max_events:
        raise BatchTooLarge(f"batch of {len(events)} events: at most {max_events} per request")
    return [parse_batch_event(item) for item in events]


def parse_batch_event(item: Any) -> BatchEvent:
    """One batch element checked as the receiver checks it (see parse_batch)."""
    if not isinstance(item, dict):
        return BatchEvent(refusal="event must be a JSON object")
    try:
        if len(exact_json.dumps(item).encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
            raise EnvelopeError(f"event larger than {MAX_EVENT_BYTES} bytes as compact JSON")
        envelope = parse_envelope(item)
        key = item.get("idempotency_key")
        if not is_idempotency_key(key):
            raise EnvelopeError(f"idempotency_key {KEY_RULE}", field="idempotency_key")
    except EnvelopeError as exc:
        return BatchEvent(refusal=str(exc))
    except RecursionError:
        return BatchEvent(refusal=TOO_DEEP)
    return BatchEvent(envelope=envelope, idempotency_key=key)


def batch_url(webhook_url: str) -> str:
    """The batch sibling of a webhook URL: ``…/odoo-webhook`` → ``…/odoo-webhook/batch``."""
    url = webhook_url.rstrip("/")
    return url if url.endswith(BATCH_PATH_SUFFIX) else url + BATCH_PATH_SUFFIX


def batch_body(events: Sequence[tuple[Envelope, str]]) -> bytes:
    """Compact UTF-8 JSON of a batch of (envelope, idempotency key): the bytes a sender signs."""
    document = {"events": [{**envelope.to_json(), "idempotency_key": key} for envelope, key in events]}
    return exact_json.dumps(document).encode()
