"""NATS JetStream: each event published to a subject of its record and acknowledged by the stream.

The event id goes as ``Nats-Msg-Id``, so a redelivery inside the stream's duplicate window is
stored once (the stream answers ``duplicate``); a delivery counts only once the stream's
acknowledgement arrives. The subject is the record's name (record_keys.py): one record's events
are delivered one at a time in order (the router's claim), and a stream keeps a subject's
messages in arrival order.

The NATS client protocol (text over TCP: INFO, CONNECT, HPUB, SUB, MSG/HMSG, PING/PONG) is
small enough to speak here without a dependency; each delivery borrows one kept connection.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from ...core.errors import ConfigurationError
from ...core.stored_event import StoredEvent
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS, MAX_ERROR_CHARS, DeliveryFailed
from .http_forward import forward_body
from .record_keys import PREFIX_PATTERN, PREFIX_RULE, record_headers, record_key

MAX_CONTROL_LINE = 4096


def _header_value(text: str) -> str:
    """A header value on one line (NATS headers are line-framed like HTTP's)."""
    return "".join(char if " " <= char <= "~" else f"%{ord(char):02X}" for char in text)


class NatsJetStreamDestination:
    """Publishes each event to JetStream and waits for the stream's acknowledgement."""

    needs_message = False
    messaging_system = "nats"  # how its delivery spans name the system
    waits_on_network = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        subject_prefix: str = "ipai",
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "nats" or not parts.hostname:
            raise ConfigurationError(
                f"destination {name}: url must be nats://host:port (got {parts.scheme or 'no'} scheme)"
            )
        if not PREFIX_PATTERN.fullmatch(subject_prefix):
            raise ConfigurationError(
                f"destination {name}: subject_prefix must be {PREFIX_RULE} (got {subject_prefix!r})"
            )
        self.name, self.timeout, self.subject_prefix = name, timeout, subject_prefix
        self.address = (parts.hostname, parts.port or 4222)
        self.credentials: dict[str, str] = {}
        if parts.username:
            self.credentials = {"user": unquote(parts.username), "pass": unquote(parts.password or "")}
        elif token:
            self.credentials = {"auth_token": token}
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        """Publish one event; returns once the stream acknowledged it (or knew it already)."""
        deadline = time.monotonic() + self.timeout
        body = forward_body(event)
        headers = {
            "Nats-Msg-Id": str(event.id),
            "Content-Type": "application/json",
            **record_headers(event),
        }
        subject = record_key(self.subject_prefix, event)
        connection, kept = self._borrow(deadline)
        while True:
            try:
                answer = connection.request(subject, headers, body, deadline)
            except DeliveryFailed:
                self._give_back(connection)  # refused before anything was sent
                raise
            except (OSError, ProtocolError) as exc:
                connection.close()
                if kept and time.monotonic() < deadline:
                    # A kept connection the server has since closed (idle past its pings, a
                    # restart): once more on a new one. Had the first reached the stream, the
                    # same Nats-Msg-Id makes the second a duplicate it does not store.
                    connection, kept = self._open(deadline), False
                    continue
                raise self._failure(exc, deadline) from None
            self._give_back(connection)
            return _acknowledged(answer, subject)

    def _failure(self, exc: Exception, deadline: float) -> DeliveryFailed:
        if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
            return DeliveryFailed(f"NATS JetStream did not acknowledge within {self.timeout:g} s")
        return DeliveryFailed(f"NATS at {self._where()}: {str(exc)[:MAX_ERROR_CHARS]}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _borrow(self, deadline: float) -> tuple[_Connection, bool]:
        """A kept connection (and True), else a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._open(deadline), False

    def _open(self, deadline: float) -> _Connection:
        try:
            return _Connection.open(self.address, self.credentials, deadline)
        except (OSError, ProtocolError) as exc:
            raise DeliveryFailed(
                f"NATS at {self._where()} cannot be reached: {str(exc)[:MAX_ERROR_CHARS]}"
            ) from None

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            self._idle.append(connection)


def _acknowledged(answer: _Answer, subject: str) -> int | None:
    """Nothing when the stream stored the event (or had it already); else DeliveryFailed."""
    if answer.status == "503":
        raise DeliveryFailed(
            f"no JetStream stream takes subject {subject}: add one whose subjects match it"
            " (e.g. `nats stream add --subjects '<prefix>.>'`); the event waits and is retried"
        )
    if answer.status:
        raise DeliveryFailed(f"NATS answered status {answer.status} {answer.description}".strip())
    try:
        document: Any = json.loads(answer.payload)
    except ValueError:
        quoted = answer.payload[:MAX_ERROR_CHARS]
        raise DeliveryFailed(f"JetStream's answer is not JSON: {quoted!r}") from None
    error = document.get("error") if isinstance(document, dict) else None
    if error or not isinstance(document, dict) or "seq" not in document:
        description = error.get("description") if isinstance(error, dict) else answer.payload
        raise DeliveryFailed(f"JetStream refused the event: {str(description)[:MAX_ERROR_CHARS]}")
    return None


class ProtocolError(Exception):
    """The server said something this client does not follow, or refused it (-ERR)."""


class _Answer:
    def __init__(self, payload: bytes, status: str = "", description: str = "") -> None:
        self.payload, self.status, self.description = payload, status, description


class _Connection:
    """One NATS connection with its reply inbox; used by one delivery at a time."""

    def __init__(self, sock: socket.socket, max_payload: int) -> None:
        self.sock, self.max_payload = sock, max_payload
        self.inbox = f"_INBOX.{secrets.token_hex(12)}"
        self.buffer = b""
        self.sequence = 0

    @classmethod
    def open(cls, address: tuple[str, int], credentials: dict[str, str], deadline: float) -> _Connection:
        sock = socket.create_connection(address, timeout=max(0.01, deadline - time.monotonic()))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = cls(sock, max_payload=1024 * 1024)
        try:
            info = connection._line(deadline)
            if not info.startswith(b"INFO "):
                raise ProtocolError(f"expected INFO, got {info[:80]!r}")
            server = json.loads(info[5:])
            if not server.get("headers", False):
                raise ProtocolError("this NATS server takes no headers (NATS 2.2 or later needed)")
            connection.max_payload = int(server.get("max_payload", connection.max_payload))
            options = {
                "verbose": False,
                "pedantic": False,
                "headers": True,
                "no_responders": True,
                "protocol": 1,
                "lang": "python",
                "version": "ipai-bus",
                "name": "ipai-bus router",
                **credentials,
            }
            connection._send(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n", deadline)
            while (line := connection._line(deadline)) != b"PONG":
                if line.startswith(b"-ERR"):
                    raise ProtocolError(line[5:].decode(errors="replace").strip(" '"))
            connection._send(f"SUB {connection.inbox}.* 1\r\n".encode(), deadline)
        except BaseException:
            connection.close()
            raise
        return connection

    def request(self, subject: str, headers: dict[str, str], body: bytes, deadline: float) -> _Answer:
        """HPUB with a reply subject of this connection's inbox; the answer addressed to it."""
        self.sequence += 1
        reply = f"{self.inbox}.{self.sequence}"
        lines = "".join(f"{key}: {_header_value(value)}\r\n" for key, value in headers.items())
        head = f"NATS/1.0\r\n{lines}\r\n"
        head_bytes = head.encode()
        if len(head_bytes) + len(body) > self.max_payload:
            raise DeliveryFailed(
                f"the event is {len(head_bytes) + len(body)} bytes; this NATS server takes at most"
                f" {self.max_payload} (max_payload)",
                retryable=False,
            )
        frame = f"HPUB {subject} {reply} {len(head_bytes)} {len(head_bytes) + len(body)}\r\n".encode()
        self._send(frame + head_bytes + body + b"\r\n", deadline)
        while True:
            answer = self._next_message(deadline)
            if answer is not None and answer[0] == reply:
                return answer[1]

    def _next_message(self, deadline: float) -> tuple[str, _Answer] | None:
        line = self._line(deadline)
        if line == b"PING":
            self._send(b"PONG\r\n", deadline)
            return None
        if line in (b"PONG", b"+OK") or line.startswith(b"INFO "):
            return None
        if line.startswith(b"-ERR"):
            raise ProtocolError(line[5:].decode(errors="replace").strip(" '"))
        fields = line.split()
        if fields[:1] == [b"MSG"]:
            size = int(fields[-1])
            data = self._exactly(size + 2, deadline)[:size]
            return fields[1].decode(), _Answer(data)
        if fields[:1] == [b"HMSG"]:
            head_size, size = int(fields[-2]), int(fields[-1])
            data = self._exactly(size + 2, deadline)[:size]
            status_line = data[:head_size].split(b"\r\n", 1)[0].decode(errors="replace")
            status = status_line[len("NATS/1.0") :].strip().split(" ", 1)
            return fields[1].decode(), _Answer(
                data[head_size:], status[0] if status else "", status[1] if len(status) > 1 else ""
            )
        raise ProtocolError(f"unexpected from the server: {line[:80]!r}")

    def _send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(data)

    def _line(self, deadline: float) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_CONTROL_LINE:
                raise ProtocolError("a control line longer than the protocol allows")
            self._receive(deadline)
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def _exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._receive(deadline)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _receive(self, deadline: float) -> None:
        self.sock.settimeout(_remaining(deadline))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the delivery's budget is spent")
    return remaining
