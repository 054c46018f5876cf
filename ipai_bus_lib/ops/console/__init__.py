"""The operator console: a web page for the bus, served by `ipai-bus up` and `ipai-bus console`.

Pages: overview, events (filtered, paged), one event (envelope, payload, attempts, what it waits
behind), dead letters (retry one or many, audited with the operator's name and reason, as the
CLI does) and destinations. Server-rendered HTML, no build step; loopback by default; sign-in
with the console password. ``serve_console`` runs it until interrupted.
"""

from __future__ import annotations

import logging
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ...core.settings import Settings
from ...core.stop_signals import call_on_stop_signal
from ...storage.db import Database
from .app import Console
from .auth import Sessions, ensure_password, password_file

__all__ = ["Console", "Sessions", "console_password_file", "serve_console"]


def console_password_file(settings: Settings) -> Any:
    """Where the console password is (IPAI_CONSOLE_PASSWORD_FILE, else the config directory)."""
    return password_file(settings.console_password_file, settings.config_dir)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # the console logs what matters itself
        pass


def serve_console(settings: Settings, database_url: str, *, host: str, port: int) -> None:
    """Serve the console until SIGTERM or Ctrl-C."""
    from ..wiring import configured_destinations

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = console_password_file(settings)
    sessions = Sessions(ensure_password(path))
    database = Database(database_url, max_size=4, application_name="ipai-bus console")
    app = Console(database, sessions, configured_destinations(settings))
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
