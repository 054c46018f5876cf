"""Real servers on loopback for the router's tests: an HTTP sink and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class HttpSink:
    """A threaded HTTP server that records every request and answers what ``respond`` says."""

    def __init__(
        self, respond: Callable[[Received], Reply] | None = None, *, idle_timeout: float | None = None
    ) -> None:
        self.received: list[Received] = []
        self.respond = respond or (lambda request: Reply())
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout  # closes a keep-alive connection idle that long

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                reply = sink.respond(request)
                if reply.delay:
                    time.sleep(reply.delay)
                with sink.lock:
                    sink.received.append(request)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # routers open many keep-alive connections at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.received)


class _LoopbackServer:
    """A TCP server on loopback giving each connection a thread running ``_session``."""

    def __init__(self) -> None:
        import socket

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _session(self, client: Any) -> None:
        raise NotImplementedError

    def _trickle(self, client: Any, data: bytes, interval: float) -> None:
        """Send ``data`` a byte every ``interval`` seconds (until the server stops)."""
        for index in range(len(data)):
            if self.stopped.wait(interval):
                return
            client.sendall(data[index : index + 1])

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        self.listener.close()


class TricklingSink(_LoopbackServer):
    """A TCP server that reads a request and answers 200 one byte every ``interval`` seconds:
    each read finishes quickly, the whole answer never does."""

    def __init__(self, interval: float = 0.3, body_bytes: int = 200) -> None:
        super().__init__()
        self.interval, self.body_bytes = interval, body_bytes
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests = 0

    def _session(self, client: Any) -> None:
        with client:
            client.recv(65536)
            self.requests += 1
            answer = (
                f"HTTP/1.1 200 OK\r\nContent-Length: {self.body_bytes}\r\n\r\n".encode()
                + b"x" * self.body_bytes
            )
            try:
                self._trickle(client, answer, self.interval)
            except OSError:
                return


class TricklingSmtpServer(_LoopbackServer):
    """An SMTP server on loopback that sends one of its replies a byte every ``interval`` s.

    ``slow`` is "greeting" (the 220 trickles in) or "data" (a quick dialogue, then the 250 that
    accepts the message trickles in): each read finishes quickly, the reply takes long. "cut"
    answers DATA with the start of a 250 and closes the connection."""

    def __init__(self, slow: str, interval: float = 0.4) -> None:
        super().__init__()
        self.slow, self.interval = slow, interval
        self.sessions = 0

    def _say(self, client: Any, reply: bytes, slowly: bool) -> None:
        if slowly:
            self._trickle(client, reply, self.interval)
        else:
            client.sendall(reply)

    def _session(self, client: Any) -> None:
        self.sessions += 1
        stream = client.makefile("rb")
        try:
            with client:
                self._say(client, b"220 slow.example ESMTP\r\n", self.slow == "greeting")
                while not self.stopped.is_set():
                    line = stream.readline()
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        client.sendall(b"354 go ahead\r\n")
                        while stream.readline() not in (b".\r\n", b""):
                            pass
                        if self.slow == "cut":  # a positive start, then the connection ends
                            client.sendall(b"250 2.0")
                            return
                        self._say(client, b"250 2.0.0 queued as 1\r\n", self.slow == "data")
                    elif verb == b"QUIT":
                        client.sendall(b"221 bye\r\n")
                        return
                    else:
                        client.sendall(b"250 ok\r\n")
        except OSError:
            return
