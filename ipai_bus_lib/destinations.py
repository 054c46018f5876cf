"""Destinations: where the router delivers — Mattermost, e-mail, a signed HTTP forward, the console.

Each delivers one event and either returns (delivered; the HTTP status if there was one) or raises
DeliveryFailed saying whether a retry can help. Rate limits and circuit breakers wrap any of them.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import json
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import ConfigurationError, IpaiBusError
from .formatters import Message
from .outbox import OutboxEvent
from .routes import DestinationSpec
from .signing import standard_webhooks_headers
from .watchdog import WATCHDOG, shutdown_socket

# A delivery's whole budget: connecting, sending, and reading the complete answer.
DEFAULT_TIMEOUT_SECONDS = 10.0
# However long a destination asks us to wait (Retry-After), we try again within an hour.
MAX_RETRY_AFTER_SECONDS = 3600.0
# What is read of an answer: enough for an error message, never a destination's whole body.
MAX_ANSWER_BYTES = 64 * 1024
# 4xx answers a retry cannot fix go straight to dead; these few are worth retrying.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})
_ERROR_BODY_CHARS = 300


class DeliveryFailed(IpaiBusError):
    """A delivery did not succeed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool = True, http_status: int | None = None,
                 retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after_seconds = retry_after_seconds


class Destination(Protocol):
    """What the router needs of a destination."""

    name: str
    needs_message: bool
    waits_on_network: bool

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        """Deliver one event; returns the HTTP status (or None); raises DeliveryFailed."""

    def close(self) -> None:
        """Release connections."""


# --- HTTP helpers -----------------------------------------------------------------------------

class KeepAliveClient:
    """POSTs over keep-alive http.client connections, one per delivering thread and origin.

    Lighter than a pooled client library by half the CPU per request, which is what bounds
    deliveries per second on a small machine. A connection the server closed while it sat idle is
    reopened once, before anything was read back, so no answer is ever lost or doubled by that.
    """

    def __init__(self, timeout: float, tls_context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.tls_context = tls_context or ssl.create_default_context()
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]
             ) -> tuple[int, bytes, http.client.HTTPMessage]:
        """One POST, finished within ``timeout`` seconds in all (TimeoutError otherwise)."""
        started = time.monotonic()
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection, reused = self._connection(parts.scheme, parts.netloc)
        try:
            return self._exchange(connection, target, body, headers, started)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            connection.close()
            return self._exchange(connection, target, body, headers, started)

    def _exchange(self, connection: http.client.HTTPConnection, target: str, body: bytes,
                  headers: Mapping[str, str], started: float
                  ) -> tuple[int, bytes, http.client.HTTPMessage]:
        def remaining() -> float:
            left = self.timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError(f"no complete answer within {self.timeout:g} s")
            return left

        guard = None
        try:
            if connection.sock is None:
                connection.timeout = remaining()
                connection.connect()
            # The socket timeout bounds each read; the guard bounds the whole exchange, so a
            # destination trickling its answer byte by byte cannot hold the delivery.
            guard = WATCHDOG.register(remaining(), functools.partial(
                shutdown_socket, connection.sock.fileno()))
            connection.request("POST", target, body=body, headers=dict(headers))
            response = connection.getresponse()
            data = response.read(MAX_ANSWER_BYTES)
            if not response.isclosed():  # an answer too long to keep reading: drop the rest
                connection.close()
            return response.status, data, response.headers
        except BaseException:
            connection.close()
            if guard is not None and guard.expired:
                raise TimeoutError(f"no complete answer within {self.timeout:g} s") from None
            raise
        finally:
            if guard is not None:
                WATCHDOG.cancel(guard)
                if guard.expired:
                    connection.close()

    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        key = (scheme, netloc)
        cached = getattr(self.local, "connections", None)
        if cached is None:
            cached = self.local.connections = {}
        if key in cached:
            return cached[key], cached[key].sock is not None
        if scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=self.timeout, context=self.tls_context)
        elif scheme == "http":
            connection = http.client.HTTPConnection(netloc, timeout=self.timeout)
        else:
            raise DeliveryFailed(f"unsupported URL scheme {scheme!r}", retryable=False)
        cached[key] = connection
        with self.lock:
            self.opened.append(connection)
        return connection, False

    def close(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        for connection in opened:
            connection.close()


def post_json(client: KeepAliveClient, url: str, body: bytes, headers: Mapping[str, str]) -> int:
    """POST and classify the answer; returns the 2xx status, raises DeliveryFailed otherwise."""
    try:
        status, data, response_headers = client.post(
            url, body, {"Content-Type": "application/json", **headers})
    except TimeoutError:
        raise DeliveryFailed(f"no complete answer within {client.timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"connection failed: {type(exc).__name__}: {exc}") from None
    if 200 <= status < 300:
        return status
    detail = f"HTTP {status}: {data[:_ERROR_BODY_CHARS].decode('utf-8', 'replace').strip()}"
    if status == 429:
        raise DeliveryFailed(detail, http_status=status,
                             retry_after_seconds=retry_after(response_headers.get("Retry-After")))
    retryable = status >= 500 or status in RETRYABLE_CLIENT_ERRORS
    raise DeliveryFailed(detail, retryable=retryable, http_status=status)


def retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), at most
    MAX_RETRY_AFTER_SECONDS; None if unusable."""
    if not header or len(header) > 100:
        return None
    header = header.strip()
    if header.isdigit():
        return min(float(header), MAX_RETRY_AFTER_SECONDS)
    try:
        moment = email.utils.parsedate_to_datetime(header)
        seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


# --- the destinations ---------------------------------------------------------------------------

class MattermostDestination:
    """A Mattermost incoming webhook: ``text``, ``username``, ``icon_url``, optional ``channel``."""

    needs_message = True
    waits_on_network = True

    def __init__(self, name: str, url: str, *, channel: str | None = None,
                 username: str = "IPAI Bus", icon_url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.name, self.url, self.timeout = name, url, timeout
        self.fields = {key: value for key, value in
                       {"username": username, "icon_url": icon_url, "channel": channel}.items()
                       if value}
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        assert message is not None
        body = json.dumps({"text": message.markdown, **self.fields}).encode()
        return post_json(self.client, self.url, body, {})

    def close(self) -> None:
        self.client.close()


class HttpForwardDestination:
    """Any HTTP endpoint (n8n, a service): the event as JSON, signed per Standard Webhooks."""

    needs_message = False
    waits_on_network = True

    def __init__(self, name: str, url: str, secret: str, *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        standard_webhooks_headers(secret, message_id="check", body=b"")  # fail fast on a bad one
        self.name, self.url, self.secret, self.timeout = name, url, secret, timeout
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        body = json.dumps(forward_document(event), separators=(",", ":")).encode()
        headers = standard_webhooks_headers(self.secret, message_id=str(event.id), body=body)
        return post_json(self.client, self.url, body, headers)

    def close(self) -> None:
        self.client.close()


def forward_document(event: OutboxEvent) -> dict[str, Any]:
    """The JSON an HTTP forward sends: Standard Webhooks' type/timestamp/data shape."""
    return {
        "type": event.event_type,
        "timestamp": event.created_at.isoformat(),
        "data": {
            "event_id": str(event.id), "source": event.source,
            "aggregate_type": event.aggregate_type, "aggregate_id": event.aggregate_id,
            "occurred_at": _iso(event.occurred_at),
            "payload": event.payload,
        },
    }


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    return moment.isoformat() if isinstance(moment, datetime) else str(moment)


class EmailDestination:
    """One e-mail per event over SMTP (STARTTLS, TLS or plain), plain text plus HTML."""

    needs_message = True
    waits_on_network = True

    def __init__(self, name: str, *, host: str, port: int, sender: str, recipients: list[str],
                 security: str = "starttls", username: str | None = None,
                 password: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ConfigurationError(f"destination {name}: security must be starttls, tls or none")
        if not recipients:
            raise ConfigurationError(f"destination {name}: needs at least one recipient in `to`")
        self.name, self.host, self.port, self.sender = name, host, port, sender
        self.recipients, self.security, self.timeout = recipients, security, timeout
        self.username, self.password = username, password
        self.tls_context = tls_context or ssl.create_default_context()

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        assert message is not None
        mail = EmailMessage()
        mail["Subject"] = f"{message.emoji} {message.title}"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Message-ID"] = f"<{event.id}@ipai-bus>"  # the same on every retry
        mail.set_content(message.plain_text)
        mail.add_alternative(message.html, subtype="html")
        started = time.monotonic()
        guard = None
        try:
            with self._connect() as smtp:
                left = self.timeout - (time.monotonic() - started)
                assert smtp.sock is not None  # connected by the constructor
                guard = WATCHDOG.register(max(left, 0.001), functools.partial(
                    shutdown_socket, smtp.sock.fileno()))
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            if guard is not None and guard.expired:
                raise DeliveryFailed(f"SMTP server did not finish within {self.timeout:g} s"
                                     ) from None
            raise self._failure(exc) from None
        finally:
            if guard is not None:
                WATCHDOG.cancel(guard)
        return None

    @staticmethod
    def _failure(exc: Exception) -> DeliveryFailed:
        """An SMTP error as a delivery failure: 5xx answers are permanent (but a login refusal)."""
        if isinstance(exc, smtplib.SMTPResponseException):
            permanent = 500 <= exc.smtp_code < 600 and not isinstance(
                exc, smtplib.SMTPAuthenticationError)
            return DeliveryFailed(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:_ERROR_BODY_CHARS],
                                  retryable=not permanent)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return DeliveryFailed(f"recipients refused: {sorted(exc.recipients)}",
                                  retryable=False)
        return DeliveryFailed(f"SMTP connection failed: {type(exc).__name__}: {exc}")

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=self.tls_context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            smtp.starttls(context=self.tls_context)
        return smtp

    def close(self) -> None:
        pass


class ConsoleDestination:
    """Prints each formatted message (the embedded default, and what `ipai-bus demo` shows)."""

    needs_message = True
    waits_on_network = False
    _lock = threading.Lock()

    def __init__(self, name: str = "console", stream: Any = None) -> None:
        self.name = name
        self.stream = stream or sys.stdout

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        assert message is not None
        with self._lock:
            print(f"--- {event.event_type} {event.id}\n{message.markdown}", file=self.stream,
                  flush=True)
        return None

    def close(self) -> None:
        pass


class NoopDestination:
    """Accepts everything and does nothing: measures the claim → ack path alone."""

    needs_message = False
    waits_on_network = False

    def __init__(self, name: str = "noop") -> None:
        self.name = name

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        return None

    def close(self) -> None:
        pass


# --- rate limits and circuit breakers -----------------------------------------------------------

class TokenBucket:
    """At most ``rate`` deliveries a second on average, bursts up to ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.capacity, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()
        self.lock = threading.Lock()

    def wait_time(self) -> float:
        """Take a token if one is there (returns 0), else how long until one will be."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self) -> None:
        while (delay := self.wait_time()) > 0:
            time.sleep(delay)


class CircuitBreaker:
    """Pauses a destination that keeps failing, so its events wait instead of spending attempts.

    Closed: deliveries go through. After ``threshold`` retryable failures in a row it opens for
    ``cooldown`` seconds; then one trial delivery is let through (half-open). Whatever the trial
    meets ends it: an answer (even a refusal) closes the breaker, a failure opens it for another
    cooldown, a 429 keeps it open until the destination's Retry-After. A trial that reports
    nothing within ``trial_seconds`` (a delivery's whole budget) is given up, and the next
    delivery is the trial. ``on_change(state, open_until, error)`` is told of every transition.
    """

    def __init__(self, threshold: int = 5, cooldown: float = 30.0,
                 on_change: Callable[[str, float | None, str | None], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 trial_seconds: float = DEFAULT_TIMEOUT_SECONDS + 5) -> None:
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.trial_seconds = trial_seconds
        self.on_change = on_change or (lambda state, until, error: None)
        self.failures = 0
        self.open_until: float | None = None
        self.trial_started: float | None = None
        self.lock = threading.Lock()

    @property
    def trial_running(self) -> bool:
        return self.trial_started is not None

    def paused_until(self) -> float | None:
        """None when a delivery may go now; else when to try again."""
        with self.lock:
            if self.open_until is None:
                return None
            now = self.clock()
            if now < self.open_until:
                return self.open_until
            if self.trial_started is not None and now < self.trial_started + self.trial_seconds:
                return self.trial_started + self.trial_seconds  # the trial's answer by then
            self.trial_started = now  # half-open: this caller makes the trial delivery
            return None

    def record_success(self) -> None:
        """The destination answered (accepted, or refused the event itself): it is up."""
        with self.lock:
            was_open = self.open_until is not None
            self.failures, self.open_until, self.trial_started = 0, None, None
        if was_open:
            self.on_change("closed", None, None)

    def record_failure(self, error: str) -> None:
        """A retryable failure (no answer, 5xx): counts towards opening, or reopens."""
        with self.lock:
            self.failures += 1
            self.trial_started = None
            if self.failures < self.threshold and self.open_until is None:
                return
            self.open_until = self.clock() + self.cooldown
            until = self.open_until
        self.on_change("open", until, error)

    def record_throttled(self, retry_at: float | None) -> None:
        """A 429: the destination is up but asks for a pause. An open breaker stays open until
        its Retry-After (or a cooldown); a closed one is left alone (the event waits itself)."""
        with self.lock:
            self.trial_started = None
            if self.open_until is None:
                return
            self.open_until = retry_at if retry_at is not None else self.clock() + self.cooldown
            until = self.open_until
        self.on_change("open", until, "throttled (HTTP 429)")


# --- building destinations from the routes file ---------------------------------------------------

@dataclass(frozen=True)
class SmtpDefaults:
    """The SMTP_* settings: what an e-mail destination uses where the routes file is silent."""

    host: str
    port: int
    security: str
    username: str | None
    password: str | None
    sender: str


def build_destination(spec: DestinationSpec, env: Mapping[str, str], *,
                      smtp: SmtpDefaults,
                      timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Destination:
    """A destination from its routes-file spec; secrets are read from the variables it names."""
    options = dict(spec.options)

    def from_env(key: str, default: str | None = None) -> str | None:
        variable = options.get(f"{key}_env")
        return env.get(str(variable)) if variable else options.get(key, default)

    if spec.type == "mattermost":
        url = from_env("url")
        if not url:
            raise ConfigurationError(f"destination {spec.name}: set url_env (e.g. "
                                     "MATTERMOST_WEBHOOK_URL)", setting="MATTERMOST_WEBHOOK_URL")
        return MattermostDestination(spec.name, url, channel=options.get("channel"),
                                     username=options.get("username", "IPAI Bus"),
                                     icon_url=options.get("icon_url"), timeout=timeout)
    if spec.type == "http":
        url, secret = from_env("url"), from_env("secret")
        if not url or not secret:
            raise ConfigurationError(f"destination {spec.name}: needs url (or url_env) and "
                                     "secret_env (a whsec_… Standard Webhooks secret)")
        return HttpForwardDestination(spec.name, url, secret, timeout=timeout)
    if spec.type == "email":
        return EmailDestination(
            spec.name, host=from_env("host") or smtp.host,
            port=int(from_env("port") or smtp.port),
            sender=options.get("from", smtp.sender),
            recipients=list(options.get("to", [])),
            security=options.get("security", smtp.security),
            username=from_env("username") or smtp.username,
            password=from_env("password") or smtp.password, timeout=timeout)
    if spec.type == "noop":
        return NoopDestination(spec.name)
    return ConsoleDestination(spec.name)
