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

from . import tracing
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
        self._server = {"server.address": parts.hostname, "server.port": parts.port}
        self._connection: http.client.HTTPConnection | None = None

    def post_event(self, envelope: Envelope, key: str) -> Answer:
        """Sign and POST one envelope under its idempotency key, in a ``send`` span whose
        W3C trace context the request carries (``traceparent``): the event's trace starts here."""
        attributes = {
            **tracing.messaging("send"),
            tracing.ATTR_MESSAGE_ID: key,
            tracing.ATTR_EVENT_TYPE: envelope.event_type,
            **self._server,
        }
        with tracing.tracer().span(
            f"send {tracing.BUS_DESTINATION}", "producer", None, attributes, origin=True
        ) as span:
            return self._post(self.url, envelope.to_bytes(), key, span)

    def post_batch(self, events: Sequence[tuple[Envelope, str]]) -> Answer:
        """Sign and POST (envelope, idempotency key) pairs as one batch; the answer holds a
        result per event, in order. Each event's key travels in the signed body, so the
        request carries no idempotency key header.

        Traced as OpenTelemetry's messaging conventions say of a batch: a ``send`` span for
        the request (its context in the request's ``traceparent``) and, under it, a ``create``
        span per event whose context the event carries in the body: each event's own trace
        branch, continued by the router."""
        attributes = {**tracing.messaging("send"), tracing.ATTR_BATCH_COUNT: len(events), **self._server}
        tracer = tracing.tracer()
        with tracer.span(
            f"send {tracing.BUS_DESTINATION}", "client", None, attributes, origin=True
        ) as span:
            traces = [self._creation(tracer, span, envelope, key) for envelope, key in events]
            return self._post(batch_url(self.url), batch_body(events, traces), None, span)

    @staticmethod
    def _creation(
        tracer: tracing.Tracer, batch: tracing.Span, envelope: Envelope, key: str
    ) -> tracing.TraceContext | None:
        """One event's creation context: a ``create`` span under the batch's, or without
        OpenTelemetry a new span id in the batch's trace."""
        attributes = {
            **tracing.messaging("create"),
            tracing.ATTR_MESSAGE_ID: key,
            tracing.ATTR_EVENT_TYPE: envelope.event_type,
        }
        created = tracer.start(f"create {tracing.BUS_DESTINATION}", "producer", batch, attributes)
        created.end()
        if created.recording or batch.context is None:
            return created.context
        return batch.context.child()

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

    def _post(self, url: str, body: bytes, key: str | None, span: tracing.Span) -> Answer:
        headers = signature_headers(self.secret, body, idempotency_key=key)
        if span.context is not None:
            headers.update(span.context.headers())
        answer = self._post_signed(url, body, headers)
        span.set("http.response.status_code", answer[0])
        if answer[0] != 200:
            span.fail(str(answer[0]), str(answer[1].get("error"))[:200])
        return answer

    def _post_signed(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
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
