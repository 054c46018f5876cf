"""Any HTTP endpoint: the event as JSON, signed per Standard Webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...core import exact_json
from ...core.signing import standard_webhooks_headers, standard_webhooks_key
from ...core.stored_event import StoredEvent
from ...core.tracing import outgoing_headers
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS
from .http_client import HTTP_PERMANENT_REFUSALS, KeepAliveClient, post_json


class HttpForwardDestination:
    """Any HTTP endpoint (n8n, a service): the event as JSON, signed per Standard Webhooks."""

    needs_message = False
    waits_on_network = True

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        permanent: frozenset[int] = HTTP_PERMANENT_REFUSALS,
    ) -> None:
        self.key = standard_webhooks_key(secret)  # a secret verifiers could read otherwise fails here
        self.name, self.url, self.timeout = name, url, timeout
        self.permanent = permanent
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        body = forward_body(event)
        headers = standard_webhooks_headers(self.key, message_id=str(event.id), body=body)
        headers.update(outgoing_headers(event.trace))
        return post_json(self.client, self.url, body, headers, permanent=self.permanent)

    def close(self) -> None:
        self.client.close()


def forward_body(event: StoredEvent) -> bytes:
    """The bytes every forwarding destination (HTTP, NATS, RabbitMQ) delivers for an event."""
    return exact_json.dumps(forward_document(event)).encode()


def forward_document(event: StoredEvent) -> dict[str, Any]:
    """The JSON an HTTP forward sends: Standard Webhooks' type/timestamp/data shape."""
    return {
        "type": event.event_type,
        "timestamp": event.created_at.isoformat(),
        "data": {
            "event_id": str(event.id),
            "source": event.source,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "occurred_at": _iso(event.occurred_at),
            "payload": event.payload,
        },
    }


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    return moment.isoformat() if isinstance(moment, datetime) else str(moment)
