"""The name of an event's record on a broker: a NATS subject or an AMQP routing key.

``<prefix>.<source>.<aggregate type>.<aggregate id>``, each part one dot-separated token with
``.``, ``*``, ``>``, ``#``, ``%``, spaces, controls and non-ASCII percent-encoded, so that two
records never share a name and a broker never reads a part as a wildcard: ``hr.expense`` is the
one token ``hr%2Eexpense``. Every event of one record gets the same name.
"""

from __future__ import annotations

import re

from ...core.stored_event import StoredEvent
from ...core.tracing import outgoing_headers

_TOKEN_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:@+=,~")
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
PREFIX_RULE = "tokens of letters, digits, - and _ joined by ."


def key_token(text: str) -> str:
    """One token: characters a broker gives meaning to, and any non-ASCII, percent-encoded."""
    encoded = "".join(
        char if char in _TOKEN_SAFE else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )
    return encoded or "%"  # the empty text: every encoded character is % and two digits


def record_key(prefix: str, event: StoredEvent) -> str:
    """The name of ``event``'s record under ``prefix``."""
    tokens = (event.source, event.aggregate_type, event.aggregate_id)
    return ".".join([prefix, *(key_token(token) for token in tokens)])


def record_headers(event: StoredEvent) -> dict[str, str]:
    """What a consumer filters on without reading the body (type, source and record), and the
    W3C trace context the delivery continues (``traceparent``, ``tracestate``)."""
    return {
        **outgoing_headers(event.trace),
        "Ipai-Event-Type": event.event_type,
        "Ipai-Source": event.source,
        "Ipai-Aggregate-Type": event.aggregate_type,
        "Ipai-Aggregate-Id": event.aggregate_id,
    }
