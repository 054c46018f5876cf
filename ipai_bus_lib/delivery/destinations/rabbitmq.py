"""RabbitMQ: each event published persistent, with publisher confirms, under its record's key.

A delivery counts once the broker confirms the message (it is then on every queue the exchange
routed it to, on disk for a durable queue). ``mandatory`` publishing makes a message no queue
takes come back: the event waits and is retried rather than being confirmed into nowhere. The
routing key is the record's name (record_keys.py), ``message_id`` the event id (what consumers
de-duplicate on: a redelivery after a lost confirmation is the same message again), and the
record is in the headers too. One record's events are delivered one at a time, in order (the
router's claim), and a queue keeps them in the order published.

Uses pika (the ``rabbitmq`` extra); each delivery borrows one kept connection.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from ...core.errors import ConfigurationError
from ...core.stored_event import StoredEvent
from ...core.watchdog import WATCHDOG, shutdown_socket
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS, MAX_ERROR_CHARS, DeliveryFailed
from .http_forward import forward_body
from .record_keys import PREFIX_PATTERN, PREFIX_RULE, record_headers, record_key

PERSISTENT = 2  # AMQP delivery mode: the broker writes the message to disk on a durable queue


def _pika() -> Any:
    try:
        import pika
    except ImportError:  # pragma: no cover - the extra is installed by make test
        raise ConfigurationError(
            "a rabbitmq destination needs pika: pip install pika"
            " (in a checkout, pip install -e '.[rabbitmq]')"
        ) from None
    return pika


class RabbitMqDestination:
    """Publishes each event to an exchange and waits for the broker's confirmation."""

    needs_message = False
    messaging_system = "rabbitmq"  # how its delivery spans name the system
    waits_on_network = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        exchange: str,
        routing_key_prefix: str = "ipai",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        pika = _pika()
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"destination {name}: url must be amqp://user:password@host:5672/vhost"
            )
        if not exchange:
            raise ConfigurationError(
                f"destination {name}: needs exchange, a topic exchange whose bindings take"
                f" {routing_key_prefix}.# (the default exchange would need a queue per record)"
            )
        if not PREFIX_PATTERN.fullmatch(routing_key_prefix):
            raise ConfigurationError(
                f"destination {name}: routing_key_prefix must be {PREFIX_RULE}"
                f" (got {routing_key_prefix!r})"
            )
        try:
            self.parameters = pika.URLParameters(url)
        except Exception as exc:  # noqa: BLE001 - pika raises several kinds for a bad URL
            raise ConfigurationError(f"destination {name}: url cannot be read: {exc}") from None
        # The whole connection handshake within the budget too (pika's own default is 15 s).
        self.parameters.socket_timeout = self.parameters.stack_timeout = timeout
        self.parameters.blocked_connection_timeout = timeout
        self.name, self.exchange, self.prefix, self.timeout = name, exchange, routing_key_prefix, timeout
        self._idle: list[Any] = []  # (connection, channel) pairs
        self._lock = threading.Lock()

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        """Publish one event; returns once the broker confirmed it."""
        pika = _pika()
        key = record_key(self.prefix, event)
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            message_id=str(event.id),
            type=event.event_type,
            app_id="ipai-bus",
            headers=record_headers(event),
        )
        body = forward_body(event)
        kept = self._borrow()
        for attempt in ("kept", "new") if kept is not None else ("new",):
            connection, channel = kept if kept is not None and attempt == "kept" else self._open()
            guard = WATCHDOG.register(self.timeout, functools.partial(_cut, connection))
            try:
                channel.basic_publish(self.exchange, key, body, properties, mandatory=True)
            except pika.exceptions.UnroutableError:
                self._give_back(connection, channel)
                raise DeliveryFailed(
                    f"no queue takes routing key {key} on exchange {self.exchange}:"
                    " bind one; the event waits and is retried"
                ) from None
            except pika.exceptions.NackError:
                self._give_back(connection, channel)
                raise DeliveryFailed("RabbitMQ refused to confirm the message (nack)") from None
            except (pika.exceptions.AMQPError, OSError) as exc:
                _close_quietly(connection)
                if guard.expired:
                    raise DeliveryFailed(f"RabbitMQ did not confirm within {self.timeout:g} s") from None
                if attempt == "kept":
                    continue  # a kept connection the broker has since closed: once more, anew
                raise _failure(exc) from None
            finally:
                WATCHDOG.cancel(guard)
            self._give_back(connection, channel)
            return None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            _close_quietly(connection)

    def _borrow(self) -> tuple[Any, Any] | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _open(self) -> tuple[Any, Any]:
        pika = _pika()
        # What a broker that accepts the connection and never speaks ends in.
        from pika.adapters.utils.connection_workflow import AMQPConnectorException

        try:
            connection = pika.BlockingConnection(self.parameters)
            channel = connection.channel()
            channel.confirm_delivery()
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
            where = f"{self.parameters.host}:{self.parameters.port}"
            raise DeliveryFailed(f"RabbitMQ at {where} cannot be reached: {_described(exc)}") from None
        return connection, channel

    def _give_back(self, connection: Any, channel: Any) -> None:
        with self._lock:
            self._idle.append((connection, channel))


def _cut(connection: Any) -> None:
    """The budget is spent: shut the connection's socket so the blocked publish fails now."""
    sock = getattr(getattr(getattr(connection, "_impl", None), "_transport", None), "_sock", None)
    if sock is not None:
        shutdown_socket(sock.fileno())


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


def _described(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__)[:MAX_ERROR_CHARS]


def _failure(exc: Exception) -> DeliveryFailed:
    return DeliveryFailed(f"RabbitMQ: {_described(exc)}")
