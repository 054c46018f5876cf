"""Destinations: where the router delivers — Mattermost, e-mail, a signed HTTP forward, NATS
JetStream, RabbitMQ, the console.

Each delivers one event and either returns (delivered; the HTTP status if there was one) or raises
DeliveryFailed saying whether a retry can help. Rate limits and circuit breakers wrap any of them.
One module per destination; the shared HTTP client, the resilience wrappers and the factory that
builds destinations from the routes file each have their own.
"""

from .base import DEFAULT_TIMEOUT_SECONDS, DeliveryFailed, Destination
from .console import ConsoleDestination, NoopDestination
from .factory import SmtpDefaults, build_destination
from .http_client import (
    HTTP_PERMANENT_REFUSALS,
    MAX_ANSWER_BYTES,
    MAX_RETRY_AFTER_SECONDS,
    KeepAliveClient,
    post_json,
    retry_after,
)
from .http_forward import HttpForwardDestination, forward_document
from .mail import EmailDestination
from .mattermost import MattermostDestination
from .nats_jetstream import NatsJetStreamDestination
from .rabbitmq import RabbitMqDestination
from .resilience import CircuitBreaker, TokenBucket

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_ANSWER_BYTES",
    "MAX_RETRY_AFTER_SECONDS",
    "HTTP_PERMANENT_REFUSALS",
    "CircuitBreaker",
    "ConsoleDestination",
    "DeliveryFailed",
    "Destination",
    "EmailDestination",
    "HttpForwardDestination",
    "KeepAliveClient",
    "MattermostDestination",
    "NatsJetStreamDestination",
    "RabbitMqDestination",
    "NoopDestination",
    "SmtpDefaults",
    "TokenBucket",
    "build_destination",
    "forward_document",
    "post_json",
    "retry_after",
]
