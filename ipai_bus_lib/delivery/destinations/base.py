"""What every destination is: the interface the router uses, and how a delivery fails."""

from __future__ import annotations

from typing import Protocol

from ...core.errors import IpaiBusError
from ...core.stored_event import StoredEvent
from ..formatters import Message

# A delivery's whole budget: connecting, sending, and reading the complete answer.
DEFAULT_TIMEOUT_SECONDS = 10.0
# How much of a peer's answer (an HTTP body, an SMTP reply) a delivery error quotes.
MAX_ERROR_CHARS = 300


class DeliveryFailed(IpaiBusError):
    """A delivery did not succeed; ``retryable`` says whether trying again can help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        http_status: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after_seconds = retry_after_seconds


class Destination(Protocol):
    """What the router needs of a destination."""

    name: str
    needs_message: bool
    waits_on_network: bool

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        """Deliver one event; returns the HTTP status (or None); raises DeliveryFailed."""

    def close(self) -> None:
        """Release connections."""
