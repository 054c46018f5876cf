"""The whole bus on one machine: database, migrations, secret, receiver and router, supervised.

`ipai-bus up` and `ipai-bus demo` run it. With nothing configured it uses the embedded
PostgreSQL, makes a webhook secret (0600, under the user's config directory) and delivers to the
console; DATABASE_URL, IPAI_WEBHOOK_SECRET, MATTERMOST_WEBHOOK_URL, a routes file and so on
replace those defaults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.errors import ConfigurationError, IpaiBusError
from ..core.secret_files import ensure_secret_file
from ..core.settings import Settings, generated_secret_file, read_secret_file
from ..ingest.receiver import READY_PATH
from ..storage.migrator import migrate
from .send import receiver_url

RESTARTS_ALLOWED = 5
RESTART_WINDOW_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 25.0


@dataclass
class Child:
    """One supervised process: restarted when it dies, up to RESTARTS_ALLOWED a minute."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stdout: IO[Any] | None = None
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=self.stdout, stderr=self.stdout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts children, restarts those that die, stops them all (SIGTERM, then SIGKILL)."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def start(self) -> None:
        for child in self.children:
            child.start()

    def check(self) -> None:
        """Restart any child that died; raises IpaiBusError when one keeps dying."""
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            child.restarts = [
                moment for moment in child.restarts if now - moment < RESTART_WINDOW_SECONDS
            ] + [now]
            code = child.process.returncode if child.process else None
            if len(child.restarts) > RESTARTS_ALLOWED:
                raise IpaiBusError(
                    f"{child.name} exited {RESTARTS_ALLOWED + 1} times within a "
                    f"minute (last exit code {code}); see its output above"
                )
            print(f"ipai-bus: {child.name} exited with code {code}; restarting", file=sys.stderr)
            child.start()

    def stop(self) -> None:
        for child in self.children:
            if child.process is not None and child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


class Stack:
    """The bus's parts for `up` and `demo`; a context manager that leaves nothing running."""

    def __init__(
        self, settings: Settings, *, output: IO[Any] | None = None, console: bool = False
    ) -> None:
        self.settings = settings
        self.output = output
        self.console = console and settings.console_port != 0
        self.database_url = ""
        self.secret_file: Path | None = None
        self.supervisor: Supervisor | None = None
        self._embedded: Any = None  # the EmbeddedPostgres this stack started, to stop it
        self._cluster: Any = None  # the EmbeddedPostgres in use, if any

    @property
    def webhook_url(self) -> str:
        return receiver_url(self.settings)

    def secret(self) -> str:
        if self.settings.webhook_secrets:
            return self.settings.webhook_secrets[0]
        assert self.secret_file is not None
        return read_secret_file(self.secret_file, setting=str(self.secret_file))[0]

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.database_url = self._database()
        migrate(self.database_url)
        env = {**os.environ, "DATABASE_URL": self.database_url}
        if self._cluster is not None:  # the receiver faces the network: it may only ingest
            env["IPAI_RECEIVER_DATABASE_URL"] = self._cluster.receiver_url()
        if not self.settings.webhook_secrets:
            self.secret_file = generated_secret_file(self.settings)
            ensure_secret_file(self.secret_file)
            env["IPAI_WEBHOOK_SECRET_FILE"] = str(self.secret_file)
        command = [sys.executable, "-m", "ipai_bus_lib.ops.cli"]
        children = [
            Child("receiver", [*command, "serve"], env, self.output),
            Child("router", [*command, "route"], self._env_of("router", env), self.output),
        ]
        if self.console:  # its password exists before `up` says where it is
            from .console import console_password_file
            from .console.auth import ensure_password

            ensure_password(console_password_file(self.settings))
            console_env = self._env_of("console", env)
            children.append(Child("console", [*command, "console"], console_env, self.output))
        self.supervisor = Supervisor(children)
        self.supervisor.start()
        self._wait_until_serving()

    def _env_of(self, part: str, env: dict[str, str]) -> dict[str, str]:
        """On the embedded cluster each part logs in as its own least-privilege role; with
        DATABASE_URL the deployment chose the roles (README: Roles)."""
        if self._cluster is None:
            return env
        return {**env, "DATABASE_URL": self._cluster.login_url(part)}

    def _database(self) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        from ..storage.embedded import EmbeddedPostgres, default_home

        cluster = EmbeddedPostgres(default_home(self.settings.home))
        if not cluster.is_running():
            self._embedded = cluster  # we start it, so we stop it
        self._cluster = cluster
        return cluster.ensure_running()

    def _wait_until_serving(self, timeout: float = 30.0) -> None:
        health = receiver_url(self.settings, READY_PATH)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.supervisor is not None
            self.supervisor.check()
            if receiver_healthy(health):
                return
            time.sleep(0.2)
        raise IpaiBusError(
            f"the receiver did not answer {health} within {timeout:g} s "
            f"(is port {self.settings.receiver_port} taken? set IPAI_RECEIVER_PORT)"
        )

    def __exit__(self, *exc: Any) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


def _port_taken(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def receiver_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def require_free_ports(settings: Settings) -> None:
    """Refuse to start when something already answers on the receiver's or console's port."""
    if settings.console_port and _port_taken(settings.console_host, settings.console_port):
        raise ConfigurationError(
            f"port {settings.console_port} (the console's) is taken; stop what uses it, set"
            " IPAI_CONSOLE_PORT, or 0 for no console",
            setting="IPAI_CONSOLE_PORT",
        )
    health = receiver_url(settings, READY_PATH)
    if receiver_healthy(health):
        raise ConfigurationError(
            f"a receiver already answers on port {settings.receiver_port}; stop it or set "
            "IPAI_RECEIVER_PORT",
            setting="IPAI_RECEIVER_PORT",
        )
