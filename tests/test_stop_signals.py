"""Every long-running command stops when told, however many SIGTERM/SIGINT arrive and whenever.

Each command is started many times and sent a burst of stop signals (2 to 10, SIGTERM and SIGINT
mixed, well under a millisecond apart) at a random moment: while it starts, or once it serves.
Every run must end within the command's grace period, and leave no child behind; a run told to
stop once it serves must exit 0. The seed of each run is in the failure message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .helpers import PRIMARY_SECRET, free_port
from .readiness import http_answers, log_says, wait_for_server

pytestmark = pytest.mark.slow
GRACE_SECONDS = 30.0
PASSWORD = "stop-signals-console-password-01"


def command_for(name: str, database_url: str, tmp_path: Path) -> tuple[list[str], dict, object]:
    """The command line, its environment, and the probe that says it serves."""
    port = free_port()
    password = tmp_path / "console-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "IPAI_WEBHOOK_SECRET": PRIMARY_SECRET,
        "IPAI_ROUTER_METRICS_PORT": "0",
        "IPAI_CONSOLE_PASSWORD_FILE": str(password),
        "IPAI_BUS_CONFIG_DIR": str(tmp_path / "config"),
        "IPAI_RECEIVER_PORT": str(port),
        "IPAI_CONSOLE_PORT": str(free_port()),
    }
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "out.log"
    commands = {
        "route": (["route"], log_says(log, "poll every")),
        "serve": (["serve", "--port", str(port), "--workers", "2"], http_answers(base + "/healthz")),
        "console": (["console", "--port", str(port)], http_answers(base + "/login")),
        "up": (["up"], log_says(log, "ipai-bus is up")),
    }
    arguments, probe = commands[name]
    return [sys.executable, "-m", "ipai_bus_lib.ops.cli", *arguments], env, probe


def one_run(name: str, database_url: str, tmp_path: Path, seed: int) -> None:
    chance = random.Random(seed)
    line, env, probe = command_for(name, database_url, tmp_path)
    log_path = tmp_path / "out.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(line, env=env, stdout=log, stderr=subprocess.STDOUT)
    once_serving = chance.random() < 0.6
    try:
        if once_serving:
            wait_for_server(name, probe, process=process, log=log_path)
            time.sleep(chance.uniform(0, 0.5))
        else:
            time.sleep(chance.uniform(0, 1.5))
        children = _children(process)
        for _ in range(chance.randint(2, 10)):
            if process.poll() is not None:
                break
            process.send_signal(chance.choice([signal.SIGTERM, signal.SIGTERM, signal.SIGINT]))
            time.sleep(chance.uniform(0, 0.0006))
        code = process.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{name} (seed {seed}) did not stop within {GRACE_SECONDS:g} s:\n{_tail(log_path)}")
    if once_serving:
        assert code == 0, f"{name} (seed {seed}) exited {code}:\n{_tail(log_path)}"
    deadline = time.monotonic() + 10
    while any(_alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [child for child in children if _alive(child)], f"{name} (seed {seed}) left a child"


def _children(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:])


@pytest.mark.parametrize(("name", "runs"), [("route", 16), ("serve", 5), ("console", 6), ("up", 2)])
def test_a_burst_of_stop_signals_at_any_moment_stops_the_command(name, runs, clean_bus, tmp_path):
    first_seed = int(os.environ.get("IPAI_SIGNAL_SEED", time.time_ns() % 1_000_000))
    for run in range(runs):
        one_run(name, clean_bus, tmp_path, first_seed + run)
