"""Destinations built from the routes file, with the SMTP settings as defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...core import chat_actions
from ...core.errors import ConfigurationError
from ..routes import DestinationSpec
from .base import DEFAULT_TIMEOUT_SECONDS, Destination
from .console import ConsoleDestination, NoopDestination
from .http_forward import HttpForwardDestination
from .mail import EmailDestination
from .mattermost import ActionButtons, MattermostDestination
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
            actions=_action_buttons(spec.name, options, from_env("actions_url"), env),
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


def _action_buttons(
    name: str, options: Mapping[str, Any], callback_url: str | None, env: Mapping[str, str]
) -> ActionButtons | None:
    """Buttons for a Mattermost destination that opts in with ``actions_url`` (Odoo's callback,
    or ``actions_url_env``): signed with the first key of ``action_key_env`` (default
    IPAI_ACTION_KEY), usable by ``actions_for`` (``channel:<id>`` or ``user:<id>``)."""
    if not callback_url:
        return None
    where = f"destination {name}"
    variable = str(options.get("action_key_env", "IPAI_ACTION_KEY"))
    try:
        keys = chat_actions.check_action_keys(env.get(variable, "").split(","))
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc} ({variable})", setting=variable) from None
    who = str(options.get("actions_for", ""))
    if not chat_actions.WHO_PATTERN.fullmatch(who):
        raise ConfigurationError(
            f"{where}: actions_for must say who may click, channel:<Mattermost channel id>"
            " or user:<Mattermost user id>"
        )
    if not callback_url.startswith(("https://", "http://")):
        raise ConfigurationError(f"{where}: actions_url must be Odoo's http(s) URL")
    hours = options.get("actions_lifetime_hours", chat_actions.DEFAULT_LIFETIME_SECONDS / 3600)
    if type(hours) not in (int, float) or not 0 < hours <= 24 * 90:
        raise ConfigurationError(f"{where}: actions_lifetime_hours must be between 0 and 2160")
    return ActionButtons(callback_url, keys[0], who, int(hours * 3600))
