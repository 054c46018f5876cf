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
from .tracing import TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceContext, parse_trace_context

# Each element may carry its event's W3C trace context beside its key; it is not the event's
# data, so it counts toward neither the event's size limit nor any refusal.
_TRACE_FIELDS = (TRACEPARENT_HEADER, TRACESTATE_HEADER)
# The bytes a sender's own trace context adds to an element (its spans have no tracestate): what
# a sender sizing its batches counts per event on top of the element without it.
TRACE_FIELD_BYTES = len(',"traceparent":""') + len("00-") + 32 + 1 + 16 + 1 + 2


@dataclass(frozen=True)
class BatchEvent:
    """One element of a batch body: its envelope and idempotency key, or why it was refused."""

    envelope: Envelope | None = None
    idempotency_key: str | None = None
    refusal: str | None = None
    trace: TraceContext | None = None


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
    trace = None
    if TRACEPARENT_HEADER in item:
        trace = parse_trace_context(item.get(TRACEPARENT_HEADER), item.get(TRACESTATE_HEADER))
        item = {name: value for name, value in item.items() if name not in _TRACE_FIELDS}
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
    return BatchEvent(envelope=envelope, idempotency_key=key, trace=trace)


def batch_url(webhook_url: str) -> str:
    """The batch sibling of a webhook URL: ``…/odoo-webhook`` → ``…/odoo-webhook/batch``."""
    url = webhook_url.rstrip("/")
    return url if url.endswith(BATCH_PATH_SUFFIX) else url + BATCH_PATH_SUFFIX


def batch_body(
    events: Sequence[tuple[Envelope, str]], traces: Sequence[TraceContext | None] | None = None
) -> bytes:
    """Compact UTF-8 JSON of a batch of (envelope, idempotency key), each element with its
    event's trace context when ``traces`` gives one: the bytes a sender signs."""
    contexts = traces if traces is not None else [None] * len(events)
    document = {
        "events": [
            {**envelope.to_json(), "idempotency_key": key, **(trace.fields() if trace else {})}
            for (envelope, key), trace in zip(events, contexts)
        ]
    }
    return exact_json.dumps(document).encode()
