"""The operator console: a web page for the bus, served by `ipai-bus up` and `ipai-bus console`.

Pages: overview, events (filtered, paged), one event (envelope, payload, attempts, what it waits
behind), dead letters (retry one or many, audited with the operator's name and reason, as the
CLI does) and destinations. Server-rendered HTML, no build step; loopback by default; sign-in
with the console password. ``serve_console`` runs it until interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ...core.settings import Settings
from ...core.stop_signals import call_on_stop_signal, ignore_stop_signals
from ...core.watchdog import WATCHDOG, shutdown_socket
from ...storage.db import Database
from .app import Console
from .auth import Sessions, ensure_password, password_file

__all__ = ["Console", "Sessions", "console_password_file", "serve_console"]
log = logging.getLogger("ipai_bus.console")


def console_password_file(settings: Settings) -> Any:
    """Where the console password is (IPAI_CONSOLE_PASSWORD_FILE, else the config directory)."""
    return password_file(settings.console_password_file, settings.config_dir)


# Connections served at once; one more is answered 503 and closed at once.
MAX_CONNECTIONS = 64
# A connection must send its request within IDLE_SECONDS of its last byte, and be answered
# within REQUEST_SECONDS in all: an idle or trickling client costs a thread that long at most.
IDLE_SECONDS = 10.0
REQUEST_SECONDS = 30.0
_BUSY_ANSWER = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\nconsole busy, retry\n"
)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per connection, at most MAX_CONNECTIONS of them."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits to be accepted (or refused 503)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY_ANSWER)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        guard = WATCHDOG.register(REQUEST_SECONDS, functools.partial(shutdown_socket, request.fileno()))
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - as socketserver does, but quietly
            self.handle_error(request, client_address)
        finally:
            WATCHDOG.cancel(guard)  # before the descriptor is closed and can be reused
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("console: connection from %s ended: %s", client_address[0], sys.exc_info()[1])


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_SECONDS  # per read and write on the connection

    def log_message(self, *args: Any) -> None:  # the console logs what matters itself
        pass


def serve_console(settings: Settings, database_url: str, *, host: str, port: int) -> None:
    """Serve the console until SIGTERM or Ctrl-C."""
    from ..wiring import configured_destinations, types_without_route

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = console_password_file(settings)
    sessions = Sessions(ensure_password(path))
    database = Database(database_url, max_size=4, application_name="ipai-bus console")
    app = Console(
        database,
        sessions,
        configured_destinations(settings),
        unrouted=functools.partial(types_without_route, settings),
    )
    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    call_on_stop_signal(server.shutdown)  # serve_forever returns once the signal's thread asks
    print(
        f"console at http://{host}:{server.server_port} (password in {path})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        database.close()
        ignore_stop_signals()
