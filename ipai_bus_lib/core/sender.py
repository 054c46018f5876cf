"""The one sender of signed events: `ipai-bus send`, the demo, scripts and the Odoo addon's
dispatcher all post through SignedSender.

One kept-alive HTTP/1.1 connection per sender (the Odoo dispatcher posts a whole backlog over
it), the standard library only (it runs inside Odoo's Python), and the wire contract's framing:
an event's body is its envelope, a batch's goes to the webhook's ``/batch`` sibling.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .batch import batch_body, batch_url
from .envelope import Envelope
from .errors import ConfigurationError, IpaiBusError
from .signing import signature_headers

DEFAULT_TIMEOUT_SECONDS = 10.0
# A kept-alive connection the receiver closed meanwhile fails at once with one of these; the
# request is sent again on a new connection (the receiver is idempotent on keys).
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class ReceiverUnreachable(IpaiBusError):
    """No receiver answered at the URL, or it did not answer within the timeout; ``reason``
    says which, for a message of the caller's own."""

    def __init__(self, url: str, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(f"no receiver at {url}: {reason}")
        self.url, self.reason, self.timed_out = url, reason, timed_out


Answer = tuple[int, dict[str, Any]]


class SignedSender:
    """Signs and POSTs events to one receiver's webhook URL over one kept-alive connection.

    Each call returns the HTTP status and the receiver's JSON answer, whatever the status;
    raises ReceiverUnreachable when no answer came, ConfigurationError for a URL that is not
    http(s). Use as a context manager, or call close().
    """

    def __init__(self, url: str, secret: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("the webhook URL must start with http:// or https://")
        self.url, self.secret, self.timeout = url, secret, timeout
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._connection: http.client.HTTPConnection | None = None

    def post_event(self, envelope: Envelope, key: str) -> Answer:
        """Sign and POST one envelope under its idempotency key."""
        return self._post(self.url, envelope.to_bytes(), key)

    def post_batch(self, events: Sequence[tuple[Envelope, str]]) -> Answer:
        """Sign and POST (envelope, idempotency key) pairs as one batch; the answer holds a
        result per event, in order. Each event's key travels in the signed body, so the
        request carries no idempotency key header."""
        return self._post(batch_url(self.url), batch_body(events), None)

    def close(self) -> None:
        """Close the kept-alive connection (the next post opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> SignedSender:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _post(self, url: str, body: bytes, key: str | None) -> Answer:
        headers = signature_headers(self.secret, body, idempotency_key=key)
        target = urlsplit(url)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        for _ in range(2):
            reused = self._connection is not None
            try:
                return self._exchange(path, body, headers)
            except _STALE_CONNECTION:
                self.close()
                if reused:
                    continue  # the receiver closed a kept-alive connection: once more, anew
                raise ReceiverUnreachable(url, "the connection closed without an answer") from None
            except TimeoutError:
                self.close()
                reason = f"no answer within {self.timeout:g} s"
                raise ReceiverUnreachable(url, reason, timed_out=True) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ReceiverUnreachable(url, str(exc) or type(exc).__name__) from None
        raise AssertionError("a fresh connection either answers or raises")

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        connection = self._open()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
        if response.will_close:
            self.close()
        try:
            document = json.loads(text or b"{}")
        except ValueError:
            document = None
        if not isinstance(document, dict):
            document = {"ok": False, "error": f"HTTP {response.status} (not JSON)"}
        return response.status, document

    def _open(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._netloc, timeout=self.timeout)
        return self._connection


def post_event(
    url: str, envelope: Envelope, *, secret: str, key: str, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Answer:
    """Sign and POST one envelope on a connection of its own; see SignedSender."""
    with SignedSender(url, secret, timeout=timeout) as sender:
        return sender.post_event(envelope, key)


def post_batch(
    url: str,
    events: Sequence[tuple[Envelope, str]],
    *,
    secret: str,
    timeout: float = 30.0,
) -> Answer:
    """Sign and POST one batch on a connection of its own; see SignedSender.post_batch."""
    with SignedSender(url, secret, timeout=timeout) as sender:
        return sender.post_batch(events)
