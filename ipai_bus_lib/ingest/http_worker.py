"""The receiver's HTTP front: a gunicorn worker that reads requests with asyncio and runs the
WSGI application on threads only once a whole request has arrived.

A thread-per-connection server gives every idle or slow client a thread: a few dozen of them
stall everyone else. Here a connection costs a socket and a coroutine until its request is
complete, within deadlines (the head within ``head_seconds``, the body within
``body_seconds``, an idle keep-alive closed after ``idle_seconds``); when connections run out,
the oldest ones that are not being answered make room. The application's threads only ever
see complete requests, so they work at the database's pace, not the clients'. Errors the server
itself answers (a malformed request, a head too large, too busy) are JSON, like the receiver's.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import h11
from gunicorn.workers.base import Worker

from ..core.contract import (
    BATCH_PATH_SUFFIX,
    IDEMPOTENCY_KEY_HEADER,
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    TIMESTAMP_HEADER,
)
from ..core.memory import FreedMemoryReturner, cap_malloc_arenas

SERVER_NAME = "ipai-bus"
MAX_HEAD_BYTES = 16 * 1024
# Only these headers must come once; others are joined with "," as WSGI servers do.
SINGLE_HEADERS = frozenset(
    {IDEMPOTENCY_KEY_HEADER.encode(), TIMESTAMP_HEADER.encode(), b"content-length", b"content-type"}
)
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class FrontLimits:
    """Deadlines and sizes of the HTTP front (per worker process)."""

    # The largest body of a batch path (…/batch), and of any other path: a longer declared
    # length is answered 413 before a byte of the body is read.
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_body_bytes: int = MAX_EVENT_BYTES
    head_seconds: float = 10.0
    body_seconds: float = 30.0
    idle_seconds: float = 5.0
    write_seconds: float = 10.0
    max_connections: int = 10_000
    # Requests waiting for a thread beyond this many per thread are answered 503 at once.
    queue_per_thread: int = 16


class _Connection:
    """One client connection's state, for eviction and deadlines."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.busy = False  # a request is with the application or being answered
        self.deadline: asyncio.TimerHandle | None = None

    def set_deadline(self, loop: asyncio.AbstractEventLoop, seconds: float | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = None if seconds is None else loop.call_later(seconds, self.transport.abort)

    def close(self) -> None:
        self.set_deadline(asyncio.get_running_loop(), None)
        self.transport.abort()


class HttpFront:
    """Serves one WSGI application on listening sockets until ``stop`` is called."""

    def __init__(self, application: Any, limits: FrontLimits, threads: int) -> None:
        self.application = application
        self.limits = limits
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="receiver")
        self.connections: collections.OrderedDict[_Connection, None] = collections.OrderedDict()
        self.queued = 0
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            sock.setblocking(False)
            self.servers.append(
                await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD_BYTES * 4)
            )

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let requests in progress finish (up to the grace), close the rest."""
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        until = loop.time() + grace_seconds
        while any(c.busy for c in self.connections) and loop.time() < until:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()
        self.executor.shutdown(wait=False)

    # --- one connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer.transport)  # type: ignore[arg-type]
        self._admit(connection)
        loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername") or ("", 0)
        protocol = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            connection.set_deadline(loop, self.limits.head_seconds)
            while True:
                request = await self._read_head(protocol, reader)
                if request is None:
                    return
                connection.busy = True
                connection.set_deadline(loop, self.limits.body_seconds)
                body, declared = await self._read_body(protocol, reader, request)
                connection.set_deadline(loop, None)
                status, headers, payload = await self._answer(request, body, declared, peer)
                connection.set_deadline(loop, self.limits.write_seconds)
                writer.write(protocol.send(h11.Response(status_code=status, headers=headers)))
                writer.write(protocol.send(h11.Data(data=payload)))
                writer.write(protocol.send(h11.EndOfMessage()))
                await writer.drain()
                connection.busy = False
                if protocol.our_state is not h11.DONE or protocol.their_state is not h11.DONE:
                    return  # the client closes, or part of its body was never read
                protocol.start_next_cycle()
                connection.set_deadline(loop, self.limits.idle_seconds)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            reason = "request head too large" if status == 431 else "malformed HTTP request"
            writer.write(_raw_json(status, {"ok": False, "error": reason}))
            await _drain_quietly(writer)
        except (ConnectionError, h11.LocalProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            connection.close()
            self.connections.pop(connection, None)

    def _admit(self, connection: _Connection) -> None:
        """Track a new connection; at the limit, close the oldest not being answered."""
        while len(self.connections) >= self.limits.max_connections:
            victim = next((c for c in self.connections if not c.busy), None)
            if victim is None:
                break
            victim.close()
            self.connections.pop(victim, None)
        self.connections[connection] = None

    async def _read_head(
        self, protocol: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        fed = len(protocol.trailing_data[0])  # pipelined bytes already received
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ_SIZE)
                protocol.receive_data(data)
                fed += len(data)
                if not data and protocol.their_state is h11.IDLE:
                    return None  # closed between requests
                continue
            if isinstance(event, h11.Request):
                # h11 bounds a head still arriving; one that arrived whole is bounded here.
                if fed - len(protocol.trailing_data[0]) > MAX_HEAD_BYTES:
                    raise h11.RemoteProtocolError("request head too large", 431)
                return event
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            raise h11.RemoteProtocolError("unexpected event before a request", 400)

    async def _read_body(
        self, protocol: h11.Connection, reader: asyncio.StreamReader, request: h11.Request
    ) -> tuple[bytes, int | None]:
        """The body, or nothing when its declared length is over the limit (refused unread);
        a body without a length is read up to one byte past the limit."""
        declared = _declared_length(request)
        path = request.target.split(b"?", 1)[0].rstrip(b"/")
        batch = path.endswith(BATCH_PATH_SUFFIX.encode())
        limit = self.limits.max_batch_bytes if batch else self.limits.max_body_bytes
        if declared is not None and declared > limit:
            return b"", declared
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionError("client closed mid-body")
                protocol.receive_data(data)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ConnectionError("client closed mid-body")
        return b"".join(chunks), None

    async def _answer(
        self, request: h11.Request, body: bytes, declared: int | None, peer: tuple[Any, ...]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self.queued >= self.threads * self.limits.queue_per_thread:
            status, headers, payload = _json_parts(
                503, {"ok": False, "error": "receiver busy, retry later"}
            )
            return status, [*headers, (b"retry-after", b"1")], payload
        environ = _environ(request, body, declared, peer)
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, _call_application, self.application, environ
            )
        finally:
            self.queued -= 1


def _declared_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is one valid number
    return None


def _environ(
    request: h11.Request, body: bytes, declared: int | None, peer: tuple[Any, ...]
) -> dict[str, Any]:
    path, _, query = request.target.decode("latin-1").partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, encoding="latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": SERVER_NAME,
        "SERVER_PORT": "",
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": str(peer[0]) if peer else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(declared if declared is not None else len(body)),
    }
    seen: set[bytes] = set()
    repeated: set[str] = set()
    for name, value in request.headers:
        text = value.decode("latin-1")
        if name == b"content-type":
            environ["CONTENT_TYPE"] = text
            continue
        if name == b"content-length":
            continue
        if b"_" in name:
            # WSGI spells x-idempotency-key as HTTP_X_IDEMPOTENCY_KEY, and x_idempotency_key would
            # land there too: names are matched exactly as sent, so such headers are dropped (as
            # gunicorn and nginx do by default, and as the Edge Function never sees them).
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if name in seen:
            environ[key] += "," + text
            if name in SINGLE_HEADERS:
                repeated.add(name.decode("latin-1"))
        else:
            environ[key] = text
        seen.add(name)
    environ["ipai.repeated_headers"] = frozenset(repeated)
    return environ


def _call_application(
    application: Any, environ: dict[str, Any]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    try:
        result = application(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
    except Exception:  # noqa: BLE001 - the application answers its own errors; this is a bug
        return _json_parts(500, {"ok": False, "error": "internal error"})
    status, headers = started
    encoded = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers
        if name.lower() != "content-length"
    ]
    encoded.append((b"content-length", str(len(payload)).encode()))
    return int(status.split(" ", 1)[0]), encoded, payload


def _json_parts(status: int, document: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    payload = json.dumps(document).encode()
    return (
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        payload,
    )


def _raw_json(status: int, document: dict[str, Any]) -> bytes:
    """A whole response written by hand, for when the HTTP state machine is past helping."""
    payload = json.dumps(document).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + payload


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(writer.drain(), timeout=1.0)
    except (ConnectionError, asyncio.TimeoutError):
        pass


def raise_open_files_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class AsyncReceiverWorker(Worker):  # type: ignore[misc]
    """gunicorn worker class running HttpFront on the sockets gunicorn's arbiter gives it."""

    limits = FrontLimits()

    def init_signals(self) -> None:
        super().init_signals()
        # The arbiter forks with the stop signals blocked (server._Arbiter): one sent meanwhile
        # is delivered now, to the handlers just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def run(self) -> None:
        cap_malloc_arenas()  # before the request threads exist, as the router does
        open_files = raise_open_files_limit()
        limits = FrontLimits(
            **{
                **self.limits.__dict__,
                "max_connections": max(64, min(self.limits.max_connections, open_files - 64)),
            }
        )
        asyncio.run(self._main(limits))

    async def _main(self, limits: FrontLimits) -> None:
        front = HttpFront(self.wsgi, limits, self.cfg.threads)
        await front.start(getattr(sock, "sock", sock) for sock in self.sockets)
        parent = self.ppid
        # A batch request holds megabytes while it is parsed and stored; without handing the
        # freed heap back, a worker stayed at its peak (71 MiB after a 100,000-event backlog).
        freed_memory = FreedMemoryReturner()
        while self.alive:  # gunicorn's signal handlers clear `alive`; wake up to notice
            self.notify()
            if os.getppid() != parent:
                break
            if not any(connection.busy for connection in front.connections):
                freed_memory.when_idle()
            await asyncio.sleep(0.5)
        await front.stop(self.cfg.graceful_timeout)
        from ..core import tracing

        tracing.flush()  # the spans of the last requests, before the worker exits
