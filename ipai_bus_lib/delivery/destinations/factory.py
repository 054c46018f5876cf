"""Destinations built from the routes file, with the SMTP settings as defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ...core.errors import ConfigurationError
from ..routes import DestinationSpec
from .base import DEFAULT_TIMEOUT_SECONDS, Destination
from .console import ConsoleDestination, NoopDestination
from .http_forward import HttpForwardDestination
from .mail import EmailDestination
from .mattermost import MattermostDestination
from .nats_jetstream import NatsJetStreamDestination
from .rabbitmq import RabbitMqDestination


@dataclass(frozen=True)
class SmtpDefaults:
    """The SMTP_* settings: what an e-mail destination uses where the routes file is silent."""

    host: str
    port: int
    security: str
    username: str | None
    password: str | None
    sender: str


def build_destination(
    spec: DestinationSpec,
    env: Mapping[str, str],
    *,
    smtp: SmtpDefaults,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Destination:
    """A destination from its routes-file spec; secrets are read from the variables it names."""
    options = dict(spec.options)
    permanent = {} if spec.permanent_statuses is None else {"permanent": spec.permanent_statuses}

    def from_env(key: str, default: str | None = None) -> str | None:
        variable = options.get(f"{key}_env")
        return env.get(str(variable)) if variable else options.get(key, default)

    if spec.type == "mattermost":
        url = from_env("url")
        if not url:
            raise ConfigurationError(
                f"destination {spec.name}: set url_env (e.g. MATTERMOST_WEBHOOK_URL)",
                setting="MATTERMOST_WEBHOOK_URL",
            )
        return MattermostDestination(
            spec.name,
            url,
            channel=options.get("channel"),
            username=options.get("username", "IPAI Bus"),
            icon_url=options.get("icon_url"),
            timeout=timeout,
            **permanent,
        )
    if spec.type == "http":
        url, secret = from_env("url"), from_env("secret")
        if not url or not secret:
            raise ConfigurationError(
                f"destination {spec.name}: needs url (or url_env) and "
                "secret_env (a whsec_… Standard Webhooks secret)"
            )
        try:
            return HttpForwardDestination(spec.name, url, secret, timeout=timeout, **permanent)
        except ValueError as exc:
            raise ConfigurationError(f"destination {spec.name}: {exc}") from None

    def required_url(example: str) -> str:
        url = from_env("url")
        if not url:
            raise ConfigurationError(f"destination {spec.name}: needs url (or url_env), e.g. {example}")
        return url

    if spec.type == "nats":
        return NatsJetStreamDestination(
            spec.name,
            required_url("nats://127.0.0.1:4222"),
            subject_prefix=str(options.get("subject_prefix", "ipai")),
            token=from_env("token"),
            timeout=timeout,
        )
    if spec.type == "rabbitmq":
        return RabbitMqDestination(
            spec.name,
            required_url("amqp://user:password@host:5672/%2F"),
            exchange=str(options.get("exchange", "")),
            routing_key_prefix=str(options.get("routing_key_prefix", "ipai")),
            timeout=timeout,
        )
    if spec.type == "email":
        return EmailDestination(
            spec.name,
            host=from_env("host") or smtp.host,
            port=int(from_env("port") or smtp.port),
            sender=options.get("from", smtp.sender),
            recipients=list(options.get("to", [])),
            security=options.get("security", smtp.security),
            username=from_env("username") or smtp.username,
            password=from_env("password") or smtp.password,
            timeout=timeout,
        )
    if spec.type == "noop":
        return NoopDestination(spec.name)
    return ConsoleDestination(spec.name)
