"""Configuration: every setting declared once, as a field of Settings (variable, default, parser, help),
read from the environment here and nowhere else, and handed on as a frozen Settings."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAYS_SECONDS,
    MIN_SECRET_LENGTH,
)
from .errors import ConfigurationError


def parse_secrets(raw: str | None, *, setting: str = "IPAI_WEBHOOK_SECRET") -> tuple[str, ...]:
    """Comma-separated active secrets, newest first (several at once while rotating).

    Raises ConfigurationError for a secret shorter than MIN_SECRET_LENGTH.
    """
    found = tuple(part.strip() for part in (raw or "").split(",") if part.strip())
    for secret in found:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"{setting}: each secret must be at least {MIN_SECRET_LENGTH} characters "
                "(make one with `ipai-bus secret new`)",
                setting=setting,
            )
    return found


def _webhook_secrets(text: str | None, path: Path | None) -> tuple[str, ...]:
    """IPAI_WEBHOOK_SECRET, else the secrets in the file IPAI_WEBHOOK_SECRET_FILE names."""
    if text:
        return parse_secrets(text)
    if not path:
        return ()
    return read_secret_file(path, setting="IPAI_WEBHOOK_SECRET_FILE")


GENERATED_SECRET_FILE = "webhook-secret"


def generated_secret_file(settings: Settings) -> Path:
    """Where `ipai-bus up` keeps the secret it generates: the config directory."""
    from .secret_files import config_dir

    return config_dir(settings.config_dir) / GENERATED_SECRET_FILE


def active_secrets(settings: Settings) -> tuple[str, ...]:
    """The webhook secrets in force: IPAI_WEBHOOK_SECRET(_FILE), else the one `ipai-bus up`
    generated (when there is one), else none. `serve`, `send` and `up` all read them so."""
    if settings.webhook_secrets:
        return settings.webhook_secrets
    path = generated_secret_file(settings)
    if path.exists():
        return read_secret_file(path, setting=str(path))
    return ()


def read_secret_file(path: Path, *, setting: str) -> tuple[str, ...]:
    """The secrets a file holds (one per line, or comma-separated): the one way they are read.

    Raises ConfigurationError when the file cannot be read or a secret is too short.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting}: cannot read {path}: {exc.strerror}", setting=setting
        ) from None
    return parse_secrets(text.replace("\n", ","), setting=setting)


# --- parsers: (variable, raw text) -> value; each raises ConfigurationError naming the variable --


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _url(name: str, raw: str) -> str:
    return raw.strip().rstrip("/")


def _path(name: str, raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _whole(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"{name} must be a whole number, got {raw!r}", setting=name
            ) from None
        if value < minimum:
            raise ConfigurationError(f"{name} must be at least {minimum}, got {value}", setting=name)
        return value

    return parse


def _positive(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}", setting=name) from None
    if not value > 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {raw}", setting=name)
    return value


def _flag(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(
        f"{name} must be 1/0, true/false, yes/no or on/off; got {text!r}", setting=name
    )


def _delays(name: str, raw: str) -> tuple[int, ...]:
    try:
        delays = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ConfigurationError(
            f"{name} must be comma-separated seconds, e.g. 30,90,300; got {raw!r}", setting=name
        ) from None
    if not delays or min(delays) < 0:
        raise ConfigurationError(f"{name} must list non-negative seconds", setting=name)
    return delays


def _security(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("starttls", "tls", "none"):
        raise ConfigurationError(f"{name} must be starttls, tls or none; got {raw!r}", setting=name)
    return value


# --- the settings, each declared once ------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable: the Settings field it fills, its default, how it is read, and
    what it means (the README's configuration table is checked against these)."""

    variable: str
    field: str
    default: Any
    parse: Callable[[str, str], Any]
    help: str
    shown_default: str | None = None  # how the README shows the default, when not the value


_SETTING = "ipai_bus_setting"


def setting(
    variable: str,
    default: Any,
    parse: Callable[[str, str], Any],
    help: str,
    *,
    shown_default: str | None = None,
) -> Any:
    """A Settings field read from ``variable``: the one place a setting is declared."""
    declared = Setting(variable, "", default, parse, help, shown_default)
    return field(default=default, metadata={_SETTING: declared})


@dataclass(frozen=True)
class Settings:
    """Everything the bus reads from its environment, each setting declared once here: its
    field, its variable, default, parser and help (the README's configuration table is checked
    against these). Build with ``Settings.from_env()``."""

    database_url: str | None = setting(
        "DATABASE_URL",
        None,
        _text,
        "the bus database, e.g. a Supabase connection string",
        shown_default="embedded PostgreSQL",
    )
    home: Path | None = setting(
        "IPAI_BUS_HOME",
        None,
        _path,
        "the embedded PostgreSQL's data, log and password",
        shown_default="~/.local/share/ipai-bus (under root: /var/lib/ipai-bus)",
    )
    config_dir: Path | None = setting(
        "IPAI_BUS_CONFIG_DIR",
        None,
        _path,
        "where `up` keeps the secret it generates",
        shown_default="~/.config/ipai-bus",
    )
    webhook_secret_text: str | None = setting(
        "IPAI_WEBHOOK_SECRET",
        None,
        _text,
        "active secret(s), comma-separated while rotating, newest first; "
        f">= {MIN_SECRET_LENGTH} characters",
        shown_default="generated by `up`",
    )
    webhook_secret_file: Path | None = setting(
        "IPAI_WEBHOOK_SECRET_FILE", None, _path, "a file holding the secret(s), instead of the variable"
    )
    webhook_secrets: tuple[str, ...] = ()  # from the two above
    receiver_host: str = setting("IPAI_RECEIVER_HOST", "127.0.0.1", _text, "where the receiver listens")
    receiver_port: int = setting("IPAI_RECEIVER_PORT", 8787, _whole(1), "where the receiver listens")
    receiver_workers: int = setting("IPAI_RECEIVER_WORKERS", 2, _whole(1), "receiver processes")
    receiver_threads: int = setting(
        "IPAI_RECEIVER_THREADS", 8, _whole(1), "threads per receiver process for the database work"
    )
    receiver_database_url: str | None = setting(
        "IPAI_RECEIVER_DATABASE_URL",
        None,
        _text,
        "the receiver's own connection: a role in ipai_bus_ingest",
        shown_default="DATABASE_URL",
    )
    metrics_token: str | None = setting(
        "IPAI_METRICS_TOKEN",
        None,
        _text,
        "when set, GET /metrics asks for Authorization: Bearer <token>",
    )
    console_host: str = setting(
        "IPAI_CONSOLE_HOST", "127.0.0.1", _text, "where the operator console listens"
    )
    console_port: int = setting(
        "IPAI_CONSOLE_PORT", 8789, _whole(0), "the operator console's port; 0: `up` starts no console"
    )
    console_password_file: Path | None = setting(
        "IPAI_CONSOLE_PASSWORD_FILE",
        None,
        _path,
        "the console password (made 0600 on first use)",
        shown_default="~/.config/ipai-bus/console-password",
    )
    routes_file: Path | None = setting(
        "IPAI_ROUTES_FILE", None, _path, "TOML routes file", shown_default="built-in routes"
    )
    mattermost_webhook_url: str | None = setting(
        "MATTERMOST_WEBHOOK_URL",
        None,
        _text,
        "with the built-in routes: deliver to this incoming webhook instead of the console",
    )
    odoo_base_url: str | None = setting(
        "ODOO_BASE_URL", None, _url, "messages link to <base>/odoo/<model>/<id>"
    )
    router_batch_size: int = setting("IPAI_ROUTER_BATCH_SIZE", 25, _whole(1), "events claimed per batch")
    router_lease_seconds: int = setting(
        "IPAI_ROUTER_LEASE_SECONDS",
        DEFAULT_LEASE_SECONDS,
        _whole(1),
        "how long a claim is held before another router may take it back",
    )
    router_poll_seconds: float = setting(
        "IPAI_ROUTER_POLL_SECONDS",
        5.0,
        _positive,
        "fallback poll; routers wake on the outbox NOTIFY at once",
    )
    router_listen: bool = setting(
        "IPAI_ROUTER_LISTEN", True, _flag, "0 turns NOTIFY off (poll only)", shown_default="1"
    )
    router_concurrency: int = setting(
        "IPAI_ROUTER_CONCURRENCY", 16, _whole(1), "deliveries in flight per router"
    )
    router_metrics_host: str = setting(
        "IPAI_ROUTER_METRICS_HOST",
        "127.0.0.1",
        _text,
        "where a router serves /metrics, /healthz and /readyz",
    )
    router_metrics_port: int = setting(
        "IPAI_ROUTER_METRICS_PORT",
        8788,
        _whole(0),
        "the router's monitoring port; 0 turns the endpoints off",
    )
    delivery_timeout_seconds: float = setting(
        "IPAI_DELIVERY_TIMEOUT_SECONDS", 10.0, _positive, "a delivery's whole budget"
    )
    max_attempts: int = setting(
        "IPAI_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, _whole(1), "one try and three retries, then dead"
    )
    retry_delays: tuple[int, ...] = setting(
        "IPAI_RETRY_DELAYS",
        DEFAULT_RETRY_DELAYS_SECONDS,
        _delays,
        "seconds before each retry",
        shown_default=",".join(map(str, DEFAULT_RETRY_DELAYS_SECONDS)),
    )
    breaker_threshold: int = setting(
        "IPAI_BREAKER_THRESHOLD", 5, _whole(1), "failures in a row that pause a destination"
    )
    breaker_cooldown_seconds: float = setting(
        "IPAI_BREAKER_COOLDOWN_SECONDS", 30.0, _positive, "how long a paused destination waits"
    )
    smtp_host: str = setting("SMTP_HOST", "localhost", _text, "e-mail destinations' server")
    smtp_port: int = setting("SMTP_PORT", 587, _whole(1), "e-mail destinations' port")
    smtp_security: str = setting("SMTP_SECURITY", "starttls", _security, "starttls, tls or none")
    smtp_username: str | None = setting("SMTP_USERNAME", None, _text, "e-mail login")
    smtp_password: str | None = setting("SMTP_PASSWORD", None, _text, "e-mail password")
    smtp_from: str = setting("SMTP_FROM", "ipai-bus@localhost", _text, "e-mail sender")
    # The environment as read, for routes files that name their secrets' variables.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; raises ConfigurationError naming the first bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for entry in SETTINGS:
            raw = env.get(entry.variable)
            if raw is not None and raw.strip() != "":
                values[entry.field] = entry.parse(entry.variable, raw)
        values["webhook_secrets"] = _webhook_secrets(
            values.get("webhook_secret_text"), values.get("webhook_secret_file")
        )
        return cls(**values, environment=dict(env))


# Every setting, in the order declared, with the field it fills.
SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(declared.metadata[_SETTING], field=declared.name)
    for declared in dataclasses.fields(Settings)
    if _SETTING in declared.metadata
)
DEFAULTS: Mapping[str, Any] = {entry.field: entry.default for entry in SETTINGS}
