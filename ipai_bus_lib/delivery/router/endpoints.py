"""A router's HTTP endpoints for monitoring: ``/metrics`` (Prometheus), ``/healthz`` (its loop is
running) and ``/readyz`` (its database answers and has every migration)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ...core.errors import DatabaseUnavailable
from ...storage import readiness
from .loop import Router
from .metrics import RouterMetrics

log = logging.getLogger("ipai_bus.router")


class RouterEndpoints:
    """Serves the endpoints on a daemon thread; ``close()`` stops it."""

    def __init__(self, router: Router, metrics: RouterMetrics, host: str, port: int) -> None:
        self.router, self.metrics = router, metrics
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body, content_type = endpoints.answer(self.path.split("?")[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> RouterEndpoints:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            body, content_type = self.metrics.render()
            return 200, body, content_type
        if path == "/healthz":
            if self.router.running:
                return _json(200, {"ok": True})
            return _json(503, {"ok": False, "error": "the router's loop is not running"})
        if path == "/readyz":
            return self._readyz()
        return _json(404, {"ok": False, "error": "not found"})

    def _readyz(self) -> tuple[int, bytes, str]:
        try:
            with self.router.database.autocommit() as cursor:
                missing = readiness.missing_migrations(cursor)
        except DatabaseUnavailable:
            return _json(503, {"ok": False, "error": "database unavailable"})
        if missing:
            error = f"database misses migration(s) {', '.join(missing)}: run `ipai-bus migrate`"
            return _json(503, {"ok": False, "error": error})
        return _json(200, {"ok": True})


def _json(status: int, document: dict[str, Any]) -> tuple[int, bytes, str]:
    return status, json.dumps(document).encode(), "application/json"
