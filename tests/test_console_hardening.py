"""The console holds up (#22 item 8): 415 where due, sign-in attempts slowed per client and per
name, sign-out ended on the server, redirects that stay on the console, bounded idle
connections, and a page served on the first request after PostgreSQL restarts.

A real `ipai-bus console` process on loopback; clients from several loopback addresses
(127.0.0.x) stand for several machines.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import psutil
import pytest
import requests

from .helpers import console_sign_in, free_port, private_cluster, snapshot
from .readiness import http_answers, wait_for_server

pytestmark = pytest.mark.slow
PASSWORD = "console-hardening-password-0123"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@contextlib.contextmanager
def console_process(database_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    password = tmp_path / "console-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "IPAI_CONSOLE_PASSWORD_FILE": str(password)}
    log_path = tmp_path / "console.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ipai_bus_lib.ops.cli", "console", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server("the console", http_answers(base + "/login"), process=process, log=log_path)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture()
def console(clean_bus, tmp_path):
    with console_process(clean_bus, tmp_path) as (base, process):
        yield base, process, clean_bus


def sign_in_from(address: str, base: str, operator: str, password: str) -> http.client.HTTPResponse:
    """The sign-in form fetched and posted from the loopback address ``address``."""
    host, port = base.removeprefix("http://").split(":")

    def connection() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host, int(port), timeout=30, source_address=(address, 0))

    first = connection()
    first.request("GET", "/login")
    page = first.getresponse()
    cookie = SimpleCookie(page.getheader("Set-Cookie"))
    token = re.search(r'name="login_token" value="([^"]+)"', page.read().decode())[1]
    first.close()
    second = connection()
    second.request(
        "POST",
        "/login",
        body=urlencode({"login_token": token, "operator": operator, "password": password}),
        headers={**FORM, "Cookie": "; ".join(f"{k}={m.value}" for k, m in cookie.items())},
    )
    answer = second.getresponse()
    answer.read()
    second.close()
    return answer


def csrf_of(session: requests.Session, base: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', session.get(base + "/dead", timeout=10).text)[1]


def test_a_form_of_another_content_type_is_415_and_changes_nothing(console):
    base, _, url = console
    before = snapshot(url)
    login = requests.post(base + "/login", data="{}", headers={"Content-Type": "application/json"})
    assert login.status_code == 415 and "Send the page" in login.text
    operator, _ = console_sign_in(base, "Ana", PASSWORD)
    retry = operator.post(
        base + "/retry", data=b"id=x", headers={"Content-Type": "text/plain"}, allow_redirects=False
    )
    assert retry.status_code == 415
    assert snapshot(url) == before


def test_wrong_passwords_slow_sign_in_per_client_and_per_name(console):
    base, _, _ = console
    for _ in range(6):  # five free, the sixth starts the wait
        assert sign_in_from("127.0.0.2", base, "Eve", "guess").status == 401
    locked = sign_in_from("127.0.0.2", base, "Bob", PASSWORD)
    assert locked.status == 429, "this client waits, whatever name it gives, even the right password"
    assert int(locked.getheader("Retry-After")) >= 1
    by_name = sign_in_from("127.0.0.3", base, "eve", PASSWORD)
    assert by_name.status == 429, "this name waits, from whichever client"
    assert sign_in_from("127.0.0.4", base, "Ana", PASSWORD).status == 303, "others sign in"
    time.sleep(1.2)  # the first wait is 1 s; the next wrong password doubles it
    assert sign_in_from("127.0.0.2", base, "Eve", "guess").status == 401
    assert sign_in_from("127.0.0.2", base, "Eve", PASSWORD).status == 429
    time.sleep(2.2)
    assert sign_in_from("127.0.0.2", base, "Eve", PASSWORD).status == 303, "then the right one works"
    assert sign_in_from("127.0.0.2", base, "Eve", "guess").status == 401, "and the count starts again"


def test_sign_out_ends_the_session_on_the_server(console):
    base, _, _ = console
    operator, _ = console_sign_in(base, "Ana", PASSWORD)
    copied = operator.cookies["ipai_console_session"]
    signed_out = operator.post(
        base + "/logout", data={"csrf": csrf_of(operator, base)}, headers=FORM, allow_redirects=False
    )
    assert signed_out.status_code == 303
    replayed = requests.get(
        base + "/dead", cookies={"ipai_console_session": copied}, allow_redirects=False, timeout=10
    )
    assert replayed.status_code == 303 and replayed.headers["Location"] == "/login"
    other, _ = console_sign_in(base, "Ben", PASSWORD)
    assert other.get(base + "/dead", allow_redirects=False).status_code == 200, "others stay in"


@pytest.mark.parametrize(
    ("back", "expected"),
    [
        ("/\\evil.example/x", "/dead?"),
        ("//evil.example/x", "/dead?"),
        ("https://evil.example/x", "/dead?"),
        ("/\t/evil.example", "/dead?"),
        ("javascript:alert(1)", "/dead?"),
        ("/events?status=dead", "/events?status=dead&"),
    ],
)
def test_a_redirect_after_an_action_stays_on_the_console(console, back, expected):
    base, _, _ = console
    operator, _ = console_sign_in(base, "Ana", PASSWORD)
    answer = operator.post(
        base + "/retry",
        data={"csrf": csrf_of(operator, base), "back": back, "reason": "r"},
        headers=FORM,
        allow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["Location"].startswith(expected)


def test_idle_connections_cost_a_bounded_number_of_threads_for_a_bounded_time(console):
    base, process, _ = console
    host, port = base.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(200)]
    try:
        time.sleep(1)
        threads = psutil.Process(process.pid).num_threads()
        assert threads <= 64 + 8, f"{threads} threads for 200 idle connections"
        idle[-1].settimeout(10)
        assert idle[-1].recv(4096).startswith(b"HTTP/1.0 503"), "beyond the bound: told at once"
        for sock in idle[:10]:
            sock.settimeout(15)
            assert sock.recv(1) == b"", "an idle connection is closed after its deadline"
        assert requests.get(base + "/login", timeout=10).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_the_first_page_after_postgres_restarts_is_served(tmp_path):
    with private_cluster(tmp_path) as (cluster, url):
        with console_process(url, tmp_path) as (base, _):
            operator, _ = console_sign_in(base, "Ana", PASSWORD)
            for page in ("/", "/dead"):  # the pool now holds connections
                assert operator.get(base + page, timeout=10).status_code == 200
            cluster.stop()
            cluster.ensure_running()
            first = operator.get(base + "/", timeout=30)
            assert first.status_code == 200, first.text[:300]
