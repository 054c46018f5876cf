"""The harness on a busy machine: a slow server is "not ready yet" until the deadline, a crash
or the deadline is said plainly, and installs wait for another apt's lock."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .readiness import ServerNotReady, http_answers, log_says, tcp_accepts, wait_for_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import apt_packages  # noqa: E402


class SlowStartingServer:
    """A real HTTP server on loopback that answers its first requests slowly, then 503, then 200,
    as Odoo does while it builds a new database's asset bundles."""

    def __init__(self, *, first_answer_after: float, unavailable_answers: int) -> None:
        self.requests = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with owner.lock:
                    owner.requests += 1
                    number = owner.requests
                if number == 1:
                    time.sleep(first_answer_after)
                status = 503 if number <= unavailable_answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/web/login"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_whose_first_answer_is_slow_and_then_503_is_waited_for():
    """A first answer after 3 s (past the old 2 s read timeout) and two 503s are not errors."""
    server = SlowStartingServer(first_answer_after=3.0, unavailable_answers=2)
    try:
        started = time.monotonic()
        assert wait_for_server("slow Odoo", http_answers(server.url), timeout=60) is True
        assert time.monotonic() - started >= 3.0, "the slow first answer was waited for"
        assert server.requests == 3, "the 503s were asked again until a 200 came"
    finally:
        server.close()


def test_the_deadline_names_the_server_its_last_error_and_its_log(tmp_path):
    server = SlowStartingServer(first_answer_after=0, unavailable_answers=10**6)
    log = tmp_path / "server.log"
    log.write_text("booting\nstill building assets\n")
    try:
        with pytest.raises(ServerNotReady) as refused:
            wait_for_server("the stuck server", http_answers(server.url), log=log, timeout=1.5)
    finally:
        server.close()
    message = str(refused.value)
    assert "the stuck server was not ready after 2 s" in message
    assert "answered 503" in message, "the last error is shown"
    assert "still building assets" in message, "the log's tail is shown"


def test_a_server_that_exits_is_reported_at_once_with_its_log(tmp_path):
    log = tmp_path / "crash.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    started = time.monotonic()
    with pytest.raises(ServerNotReady) as crashed:
        wait_for_server("the crashing server", tcp_accepts("127.0.0.1", 9), process=process, log=log)
    assert time.monotonic() - started < 10, "a crash does not wait for the deadline"
    assert "the crashing server exited with code 3" in str(crashed.value)
    assert "cannot bind" in str(crashed.value)


def test_a_log_line_announcing_the_server_is_a_probe(tmp_path):
    log = tmp_path / "up.log"
    log.write_text("starting\n")
    threading.Timer(0.5, lambda: log.write_text("starting\nipai-bus is up\n")).start()
    assert wait_for_server("up", log_says(log, "ipai-bus is up"), timeout=30)


@pytest.mark.skipif(not apt_packages.can_install(), reason="apt tests need root and apt-get")
def test_apt_waits_for_another_apt_holding_the_lock_instead_of_failing():
    """Another dpkg holds the frontend lock for 3 s: the install step waits and then succeeds."""
    lock = open("/var/lib/dpkg/lock-frontend", "w")  # noqa: SIM115
    fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(3.0, lock.close).start()
    started = time.monotonic()
    result = apt_packages.apt_get("check", "-qq", lock_wait=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2.5, "it waited for the lock rather than failing"


@pytest.mark.skipif(not apt_packages.can_install(), reason="apt tests need root and apt-get")
def test_apt_gives_up_on_the_lock_after_its_bound():
    lock = open("/var/lib/dpkg/lock-frontend", "w")  # noqa: SIM115
    fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = apt_packages.apt_get("check", "-qq", lock_wait=3)
    finally:
        lock.close()
    assert result.returncode != 0
    assert "Could not get lock" in apt_packages.last_line(result) + result.stderr
