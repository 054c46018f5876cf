"""A router behind a transaction pooler (Debian's PgBouncer, standing in for Supabase's
Supavisor on port 6543): LISTEN cannot hear NOTIFY there. The router notices at start, says so
on one line and polls at a short interval, so delivery still takes well under a second."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from .helpers import free_port, wait_until
from .readiness import log_says, tcp_accepts, wait_for_server
from .sinks import HttpSink
from .test_router_processes import ROUTES, add_events, router_process

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(PGBOUNCER).exists(),
        reason="pooler test skipped: no pgbouncer (make test installs Debian's package as root)",
    ),
]


@pytest.fixture()
def transaction_pooler(clean_bus, tmp_path):
    """PgBouncer in transaction mode in front of the test database; its URL."""
    server = urlsplit(clean_bus)
    home = tmp_path / "pgbouncer"
    home.mkdir(mode=0o777)
    home.chmod(0o777)  # PgBouncer refuses to run as root: it runs as nobody and writes here
    port = free_port()
    (home / "userlist.txt").write_text(f'"{server.username}" "{server.password}"\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        "auth_type = trust\n"
        f"auth_file = {home / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        # The router's session settings (-c options) cannot follow a transaction pooler.
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n"
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (home / name).chmod(0o644)
    command = [PGBOUNCER, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", pwd.getpwnam("nobody").pw_name]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_server(
            "PgBouncer", tcp_accepts("127.0.0.1", port), process=process, log=home / "pgbouncer.log"
        )
        yield urlunsplit(server._replace(netloc=f"{server.username}@127.0.0.1:{port}"))
    finally:
        process.terminate()
        process.wait(timeout=20)


def start_router(database_url: str, sink_url: str, tmp_path: Path, name: str):
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    log = tmp_path / f"{name}.log"
    process = router_process(database_url, routes, sink_url, log)
    wait_for_server(f"the router ({name})", log_says(log, "router "), process=process, log=log)
    return process, log


def delivery_seconds(database_url: str, sink: HttpSink, events: int = 5) -> float:
    """Seconds from storing events one by one, idle in between, to the last one's delivery."""
    latencies = []
    for _ in range(events):
        before = sink.count()
        time.sleep(0.3)  # the router is idle, waiting for work
        started = time.monotonic()
        add_events(database_url, 1)
        wait_until(lambda n=before: sink.count() > n, timeout=30, interval=0.01, what="a delivery")
        latencies.append(time.monotonic() - started)
    return max(latencies)


def test_behind_a_transaction_pooler_the_router_says_so_and_polls_briefly(
    clean_bus, transaction_pooler, tmp_path
):
    with HttpSink() as sink:
        direct, direct_log = start_router(clean_bus, sink.url, tmp_path, "direct")
        try:
            direct_seconds = delivery_seconds(clean_bus, sink)
        finally:
            direct.send_signal(signal.SIGTERM)
            direct.wait(timeout=30)
        pooled, pooled_log = start_router(transaction_pooler, sink.url, tmp_path, "pooled")
        try:
            pooled_seconds = delivery_seconds(clean_bus, sink)
        finally:
            pooled.send_signal(signal.SIGTERM)
            pooled.wait(timeout=30)
    direct_text, pooled_text = direct_log.read_text(), pooled_log.read_text()
    print(
        f"\ndirect: slowest of 5 deliveries {direct_seconds * 1000:.0f} ms;"
        f" through PgBouncer (transaction mode): {pooled_seconds * 1000:.0f} ms"
    )
    assert "LISTEN + poll every 5 s" in direct_text and "do not arrive" not in direct_text
    warnings = [line for line in pooled_text.splitlines() if "notifications do not arrive" in line]
    assert len(warnings) == 1, pooled_text
    assert "transaction pooler" in warnings[0] and "polling every 0.5 s" in warnings[0]
    assert "poll every 0.5 s" in pooled_text and "LISTEN +" not in pooled_text
