"""Serving the receiver with gunicorn: worker processes, each an asyncio HTTP front with a few
threads for the application and one connection pool (see http_worker)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from ..core.settings import DEFAULTS
from .http_worker import STOP_SIGNALS


@dataclass(frozen=True)
class ServerConfig:
    """Where and how wide the receiver listens."""

    host: str = DEFAULTS["receiver_host"]
    port: int = DEFAULTS["receiver_port"]
    workers: int = DEFAULTS["receiver_workers"]
    threads: int = DEFAULTS["receiver_threads"]
    # Each request's database work, connecting included, ends within this: past it the sender
    # is answered 503 and retries later.
    database_deadline_seconds: float = 1.5
    max_attempts: int = DEFAULTS["max_attempts"]
    metrics_token: str | None = None


def configure_request_log() -> None:
    """One JSON line per request on stderr (the receiver writes the JSON itself)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("ipai_bus")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter, except that a stop asked for while a worker is being born is not lost.

    Between fork and the worker installing its own handlers, the child runs the arbiter's
    handlers, which queue the signal in the child's copy of the arbiter, where nobody reads it:
    the worker then lives on until the graceful timeout ends in SIGKILL. Blocked across the
    fork, the signal stays pending in the child until the worker unblocks it
    (`AsyncReceiverWorker.init_signals`).
    """

    def spawn_worker(self) -> int:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return int(super().spawn_worker())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _ReceiverApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: ServerConfig, database_url: str, secrets: tuple[str, ...]) -> None:
        self._config = config
        self._database_url = database_url
        self._secrets = secrets
        super().__init__()

    def load_config(self) -> None:
        config = self._config
        for name, value in {
            "bind": f"{config.host}:{config.port}",
            "workers": config.workers,
            "threads": config.threads,
            "worker_class": "ipai_bus_lib.ingest.http_worker.AsyncReceiverWorker",
            "backlog": 2048,
            "timeout": 60,
            "graceful_timeout": 20,
            "accesslog": None,
            "proc_name": "ipai-bus-receiver",
            "child_exit": _forget_worker_metrics,
        }.items():
            self.cfg.set(name, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 26: no control socket
            self.cfg.set("control_socket_disable", True)

    def run(self) -> None:
        try:
            _Arbiter(self).run()
        except RuntimeError as error:  # gunicorn's own way of saying it cannot start
            print(f"\nError: {error}\n", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Any:
        # Runs in each worker after the fork: each gets its own pool (and its own span exporter).
        from ..core import tracing
        from ..storage.db import Database
        from .metrics import ReceiverMetrics
        from .receiver import Receiver, ReceiverConfig

        configure_request_log()
        tracing.set_service_name("ipai-bus-receiver")
        config = self._config
        database = Database(
            self._database_url,
            max_size=config.threads,
            connect_timeout=2,
            application_name="ipai-bus receiver",
            deadline_seconds=config.database_deadline_seconds,
        )
        return Receiver(
            ReceiverConfig(
                secrets=self._secrets,
                max_attempts=config.max_attempts,
                metrics_token=config.metrics_token,
            ),
            database,
            ReceiverMetrics(database, multiprocess=True),
        )


def _forget_worker_metrics(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def serve(config: ServerConfig, *, database_url: str, secrets: tuple[str, ...]) -> None:
    """Run the receiver until SIGTERM/SIGINT (gunicorn finishes in-flight requests first)."""
    metrics_dir = tempfile.mkdtemp(prefix="ipai-bus-metrics-")
    # prometheus_client reads this when first imported, which must happen after it is set.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    arbiter_pid = os.getpid()
    try:
        _ReceiverApplication(config, database_url, secrets).run()
    finally:
        # Workers are forked inside this call and leave through it too: only the arbiter, the
        # last to go, may take the directory the others still write to.
        if os.getpid() == arbiter_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)
