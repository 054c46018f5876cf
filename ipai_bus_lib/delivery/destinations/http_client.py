"""The HTTP client destinations share: keep-alive connections, one total deadline per request,
answers classified into delivered, retry or give up.

http.client opens the connections (TLS included); the request is written in one send and the
answer read by the small HTTP/1.1 reader below, which costs a fraction of http.client's
header parsing: on a small machine that CPU is what bounds deliveries per second.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ...core.watchdog import WATCHDOG, shutdown_socket
from .base import MAX_ERROR_CHARS, DeliveryFailed

# However long a destination asks us to wait (Retry-After), we try again within an hour.
MAX_RETRY_AFTER_SECONDS = 3600.0
# What is read of an answer: enough for an error message, never a destination's whole body.
MAX_ANSWER_BYTES = 64 * 1024
# Every failed answer is retried on the schedule until the event's attempts run out, except the
# ones that say the event itself is refused: retrying the same bytes cannot change those. A 404
# (an n8n workflow not yet published, a path being deployed) or a 401 (a secret being rotated) is
# retried. Each destination type names its set (PERMANENT_REFUSALS); a routes file may set
# `permanent_statuses` per destination.
HTTP_PERMANENT_REFUSALS = frozenset({400, 413, 415, 422})
MAX_ANSWER_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 65536


class ServerClosed(ConnectionError):
    """The server closed the connection before answering anything."""


class MalformedAnswer(http.client.HTTPException):
    """The server's answer is not HTTP/1.x as this client reads it."""


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
    ) -> tuple[int, bytes, dict[str, str]]:
        """One POST, finished within ``timeout`` seconds in all (TimeoutError otherwise)."""
        started = time.monotonic()
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection, reused = self._connection(parts.scheme, parts.netloc)
        try:
            return self._exchange(connection, target, body, headers, started)
        except (ServerClosed, ConnectionResetError, BrokenPipeError):
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
    ) -> tuple[int, bytes, dict[str, str]]:
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
            sock = connection.sock
            sock.settimeout(remaining())
            sock.sendall(_request_bytes(connection.host, connection.port, target, body, headers))
            status, answer_headers, data, keep_alive = _read_answer(sock)
            if not keep_alive:
                connection.close()
            return status, data, answer_headers
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


def _request_bytes(host: str, port: int, target: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reader:
    """What a socket has sent, read as far as asked and never further than a limit allows."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock, self.data = sock, data

    def _fill(self, what: str) -> None:
        chunk = self.sock.recv(_RECV_BYTES)
        if not chunk:
            raise MalformedAnswer(f"the answer ended inside {what}")
        self.data += chunk

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes up to ``marker`` (consumed with it); more than ``limit`` is malformed."""
        while marker not in self.data:
            if len(self.data) > limit:
                raise MalformedAnswer(f"{what} is too large")
            self._fill(what)
        part, _, self.data = self.data.partition(marker)
        if len(part) > limit:
            raise MalformedAnswer(f"{what} is too large")
        return part

    def exactly(self, count: int, what: str) -> bytes:
        while len(self.data) < count:
            self._fill(what)
        part, self.data = self.data[:count], self.data[count:]
        return part

    def to_close(self, limit: int) -> bytes:
        """Whatever comes until the server closes, at most ``limit`` bytes of it."""
        while len(self.data) <= limit:
            chunk = self.sock.recv(_RECV_BYTES)
            if not chunk:
                break
            self.data += chunk
        return self.data[:limit]


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers with lowercase names, at most MAX_ANSWER_BYTES of body, keep alive).

    Interim answers (1xx, such as 103 Early Hints) are skipped, as http.client skips them.
    """
    first = sock.recv(_RECV_BYTES)
    if not first:
        raise ServerClosed("the server closed the connection without answering")
    reader = _Reader(sock, first)
    while True:
        version, status, headers = _parse_head(
            reader.until(b"\r\n\r\n", MAX_ANSWER_HEAD_BYTES, "the answer's head")
        )
        if not (100 <= status < 200) or status == 101:
            break
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if status in (101, 204, 304):
        return status, headers, b"", keep_alive and not reader.data
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = _read_chunked(reader)
        return status, headers, body, keep_alive and complete
    length = headers.get("content-length", "")
    if length.isdigit():
        wanted = int(length)
        body = reader.exactly(min(wanted, MAX_ANSWER_BYTES), "its body")
        complete = len(body) == wanted and not reader.data
        return status, headers, body, keep_alive and complete
    return status, headers, reader.to_close(MAX_ANSWER_BYTES), False  # no length: until closed


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, status_text = status_line.partition(" ")
    code = status_text[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise MalformedAnswer(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version, int(code), headers


def _read_chunked(reader: _Reader) -> tuple[bytes, bool]:
    """A chunked body, at most MAX_ANSWER_BYTES of it; True when it was read to its end. A chunk
    that would go past the limit is read only up to it: a peer cannot make us buffer more."""
    body = b""
    while True:
        size_line = reader.until(b"\r\n", 1024, "a chunk size")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise MalformedAnswer("a chunk size is not hexadecimal") from None
        if size == 0:
            trailers = 0
            while reader.until(b"\r\n", MAX_ANSWER_HEAD_BYTES, "the trailers"):
                trailers += 1
                if trailers > 100:
                    raise MalformedAnswer("the trailers are too many")
            return body, not reader.data
        if len(body) + size > MAX_ANSWER_BYTES:
            return body + reader.exactly(MAX_ANSWER_BYTES - len(body), "a chunk"), False
        body += reader.exactly(size, "a chunk")
        reader.exactly(2, "a chunk")  # the chunk's closing CRLF


def post_json(
    client: KeepAliveClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    permanent: frozenset[int] = HTTP_PERMANENT_REFUSALS,
) -> int:
    """POST and classify the answer; returns the 2xx status, raises DeliveryFailed otherwise,
    retryable unless the status is one of ``permanent``."""
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
    detail = f"HTTP {status}: {data[:MAX_ERROR_CHARS].decode('utf-8', 'replace').strip()}"
    if status == 429:
        raise DeliveryFailed(
            detail,
            http_status=status,
            retry_after_seconds=retry_after(response_headers.get("retry-after")),
        )
    raise DeliveryFailed(detail, retryable=status not in permanent, http_status=status)


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
