"""Real brokers on loopback for the tests and the benchmarks: nats-server with JetStream, and a
RabbitMQ node of one's own (Debian's rabbitmq-server), each with its data in a given folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .helpers import free_port

NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class NatsServer:
    """One nats-server with JetStream stored under ``home``; started again, the same port and store."""

    def __init__(self, home: Path, config: str = "") -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.conf = home / f"nats-{self.port}.conf"
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\njetstream {{ store_dir: {home / f'jetstream-{self.port}'} }}\n{config}"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> NatsServer:
        self.process = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def add_stream(url: str, subjects: list[str], name: str = "IPAI") -> None:
    """A JetStream stream on the server at ``url`` (file storage, the default 2-minute duplicate window)."""
    import asyncio

    import nats

    async def add() -> None:
        connection = await nats.connect(url)
        try:
            await connection.jetstream().add_stream(name=name, subjects=subjects)
        finally:
            await connection.close()

    asyncio.run(add())


class RabbitMqNode:
    """A RabbitMQ node on free loopback ports, its data under ``home``; ``url`` is guest's."""

    def __init__(self, home: Path) -> None:
        (home / "enabled_plugins").write_text("[].\n")
        port = free_port()
        self.env = {
            **os.environ,
            "HOME": str(home),  # the Erlang cookie rabbitmqctl must share
            "RABBITMQ_NODENAME": f"ipai-test-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> RabbitMqNode:
        import pika

        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise RuntimeError("rabbitmq-server did not start") from None
                time.sleep(0.3)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> None:
        self.ctl("stop")
        if self.process is None:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def topic_exchange_with_queue(self, exchange: str, queue: str) -> None:
        """A durable topic exchange and a fresh durable queue bound to every ipai key."""
        import pika

        connection: Any = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key="ipai.#")
        connection.close()
