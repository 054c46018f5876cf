"""The HTTP client destinations share: keep-alive connections, one total deadline per request,
answers classified into delivered, retry or give up."""

from __future__ import annotations

import email.utils
import functools
import http.client
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ...core.watchdog import WATCHDOG, shutdown_socket
from .base import DeliveryFailed

# However long a destination asks us to wait (Retry-After), we try again within an hour.
MAX_RETRY_AFTER_SECONDS = 3600.0
# What is read of an answer: enough for an error message, never a destination's whole body.
MAX_ANSWER_BYTES = 64 * 1024
# 4xx answers a retry cannot fix go straight to dead; these few are worth retrying.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})
_ERROR_BODY_CHARS = 300


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

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
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

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
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
            guard = WATCHDOG.register(
                remaining(), functools.partial(shutdown_socket, connection.sock.fileno())
            )
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
                netloc, timeout=self.timeout, context=self.tls_context
            )
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
            url, body, {"Content-Type": "application/json", **headers}
        )
    except TimeoutError:
        raise DeliveryFailed(f"no complete answer within {client.timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"connection failed: {type(exc).__name__}: {exc}") from None
    if 200 <= status < 300:
        return status
    detail = f"HTTP {status}: {data[:_ERROR_BODY_CHARS].decode('utf-8', 'replace').strip()}"
    if status == 429:
        raise DeliveryFailed(
            detail,
            http_status=status,
            retry_after_seconds=retry_after(response_headers.get("Retry-After")),
        )
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
