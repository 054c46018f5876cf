"""One way to wait for a server that a test or a benchmark starts.

Until a generous deadline, any failure to get a good answer is "not ready yet": a refused
connection, a read that times out (Odoo builds its asset bundles on a new database's first page),
a 503, a half-written answer. Only two things end the wait early or with an error: the server's
process exiting (a crash, said with its log's tail), and the deadline (said with the server's
name, the last error and its log's tail). A busy or slow machine therefore makes a test slower,
never red.

``IPAI_TEST_READY_SECONDS`` sets the deadline for every wait (default 300 s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import requests

READY_SECONDS = float(os.environ.get("IPAI_TEST_READY_SECONDS", "300"))
# One attempt may take this long: a slow first answer is waited for, not abandoned and re-asked.
ATTEMPT_SECONDS = 30.0
LOG_TAIL_LINES = 30

Probe = Callable[[float], Any]
LogSource = str | Path | Callable[[], str] | None


class NotReadyYet(Exception):
    """A probe's answer that is not (yet) the good one; its text is the reason shown on expiry."""


class ServerNotReady(AssertionError):
    """A server gave no good answer before its deadline, or its process exited first."""


def wait_for_server(
    name: str,
    probe: Probe,
    *,
    process: subprocess.Popen | None = None,
    log: LogSource = None,
    timeout: float | None = None,
    interval: float = 0.1,
) -> Any:
    """Call ``probe(attempt_seconds)`` until it returns a true value, and return that value.

    A false value or any exception means "not ready yet". Raises ServerNotReady when ``process``
    exits first or ``timeout`` (default READY_SECONDS) passes, naming ``name``, the last error
    and the tail of ``log`` (a path, or a callable returning the text).
    """
    limit = READY_SECONDS if timeout is None else timeout
    started = time.monotonic()
    deadline = started + limit
    last_error = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise ServerNotReady(
                f"{name} exited with code {process.returncode} before it was ready"
                f" (last error: {last_error}){_tail(log)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerNotReady(
                f"{name} was not ready after {limit:.0f} s (last error: {last_error}){_tail(log)}"
            )
        try:
            result = probe(max(0.5, min(ATTEMPT_SECONDS, remaining)))
            if result:
                return result
            last_error = f"not ready ({result!r})"
        except Exception as exc:  # noqa: BLE001 - every failure is "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"[:500]
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def http_answers(
    url: str, *, statuses: Collection[int] = (200,), headers: dict[str, str] | None = None
) -> Probe:
    """A probe: GET ``url`` answers with one of ``statuses``."""

    def probe(attempt_seconds: float) -> bool:
        answer = requests.get(url, timeout=attempt_seconds, headers=headers)
        if answer.status_code not in statuses:
            raise NotReadyYet(f"GET {url} answered {answer.status_code}: {answer.text[:200]!r}")
        return True

    return probe


def tcp_accepts(host: str, port: int) -> Probe:
    """A probe: something accepts TCP connections on (host, port)."""

    def probe(attempt_seconds: float) -> bool:
        with socket.create_connection((host, port), timeout=attempt_seconds):
            return True

    return probe


def log_says(log_path: str | Path, text: str) -> Probe:
    """A probe: the log file at ``log_path`` contains ``text`` (a server announcing itself)."""

    def probe(_attempt_seconds: float) -> bool:
        if text not in Path(log_path).read_text(errors="replace"):
            raise NotReadyYet(f"{text!r} not yet in {log_path}")
        return True

    return probe


def _tail(log: LogSource) -> str:
    if log is None:
        return ""
    try:
        text = log() if callable(log) else Path(log).read_text(errors="replace")
    except OSError as exc:
        return f"\n(its log could not be read: {exc})"
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n--- the last lines of its log ---\n" + "\n".join(lines)
