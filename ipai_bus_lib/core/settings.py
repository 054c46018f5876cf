"""Configuration: every setting declared once (variable, default, parser, help) in SETTINGS,
read from the environment here and nowhere else, and handed on as a frozen Settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

MIN_SECRET_LENGTH = 16
# Delivery policy defaults; the SQL functions' own defaults (migrations) are the same numbers.
DEFAULT_RETRY_DELAYS_SECONDS: tuple[int, ...] = (30, 90, 300)
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_LEASE_SECONDS = 60


def parse_secrets(raw: str | None, *, setting: str = "IPAI_WEBHOOK_SECRET") -> tuple[str, ...]:
    """Comma-separated active secrets, newest first (several at once while rotating).

    Raises ConfigurationError for a secret shorter than 16 characters.
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


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "database_url",
        None,
        _text,
        "the bus database, e.g. a Supabase connection string",
        "embedded PostgreSQL",
    ),
    Setting(
        "IPAI_BUS_HOME",
        "home",
        None,
        _path,
        "the embedded PostgreSQL's data, log and password",
        "~/.local/share/ipai-bus (under root: /var/lib/ipai-bus)",
    ),
    Setting(
        "IPAI_BUS_CONFIG_DIR",
        "config_dir",
        None,
        _path,
        "where `up` keeps the secret it generates",
        "~/.config/ipai-bus",
    ),
    Setting(
        "IPAI_WEBHOOK_SECRET",
        "webhook_secret_text",
        None,
        _text,
        "active secret(s), comma-separated while rotating, newest first; >= 16 characters",
        "generated by `up`",
    ),
    Setting(
        "IPAI_WEBHOOK_SECRET_FILE",
        "webhook_secret_file",
        None,
        _path,
        "a file holding the secret(s), instead of the variable",
    ),
    Setting("IPAI_RECEIVER_HOST", "receiver_host", "127.0.0.1", _text, "where the receiver listens"),
    Setting("IPAI_RECEIVER_PORT", "receiver_port", 8787, _whole(1), "where the receiver listens"),
    Setting("IPAI_RECEIVER_WORKERS", "receiver_workers", 2, _whole(1), "receiver processes"),
    Setting(
        "IPAI_RECEIVER_THREADS",
        "receiver_threads",
        8,
        _whole(1),
        "threads per receiver process for the database work",
    ),
    Setting(
        "IPAI_RECEIVER_DATABASE_URL",
        "receiver_database_url",
        None,
        _text,
        "the receiver's own connection: a role in ipai_bus_ingest",
        "DATABASE_URL",
    ),
    Setting(
        "IPAI_METRICS_TOKEN",
        "metrics_token",
        None,
        _text,
        "when set, GET /metrics asks for Authorization: Bearer <token>",
    ),
    Setting(
        "IPAI_CONSOLE_HOST", "console_host", "127.0.0.1", _text, "where the operator console listens"
    ),
    Setting(
        "IPAI_CONSOLE_PORT",
        "console_port",
        8789,
        _whole(0),
        "the operator console's port; 0: `up` starts no console",
    ),
    Setting(
        "IPAI_CONSOLE_PASSWORD_FILE",
        "console_password_file",
        None,
        _path,
        "the console password (made 0600 on first use)",
        "~/.config/ipai-bus/console-password",
    ),
    Setting("IPAI_ROUTES_FILE", "routes_file", None, _path, "TOML routes file", "built-in routes"),
    Setting(
        "MATTERMOST_WEBHOOK_URL",
        "mattermost_webhook_url",
        None,
        _text,
        "with the built-in routes: deliver to this incoming webhook instead of the console",
    ),
    Setting("ODOO_BASE_URL", "odoo_base_url", None, _url, "messages link to <base>/odoo/<model>/<id>"),
    Setting("IPAI_ROUTER_BATCH_SIZE", "router_batch_size", 25, _whole(1), "events claimed per batch"),
    Setting(
        "IPAI_ROUTER_LEASE_SECONDS",
        "router_lease_seconds",
        DEFAULT_LEASE_SECONDS,
        _whole(1),
        "how long a claim is held before another router may take it back",
    ),
    Setting(
        "IPAI_ROUTER_POLL_SECONDS",
        "router_poll_seconds",
        5.0,
        _positive,
        "fallback poll; routers wake on the outbox NOTIFY at once",
    ),
    Setting("IPAI_ROUTER_LISTEN", "router_listen", True, _flag, "0 turns NOTIFY off (poll only)", "1"),
    Setting(
        "IPAI_ROUTER_CONCURRENCY", "router_concurrency", 16, _whole(1), "deliveries in flight per router"
    ),
    Setting(
        "IPAI_ROUTER_METRICS_HOST",
        "router_metrics_host",
        "127.0.0.1",
        _text,
        "where a router serves /metrics, /healthz and /readyz",
    ),
    Setting(
        "IPAI_ROUTER_METRICS_PORT",
        "router_metrics_port",
        8788,
        _whole(0),
        "the router's monitoring port; 0 turns the endpoints off",
    ),
    Setting(
        "IPAI_DELIVERY_TIMEOUT_SECONDS",
        "delivery_timeout_seconds",
        10.0,
        _positive,
        "a delivery's whole budget",
    ),
    Setting(
        "IPAI_MAX_ATTEMPTS",
        "max_attempts",
        DEFAULT_MAX_ATTEMPTS,
        _whole(1),
        "one try and three retries, then dead",
    ),
    Setting(
        "IPAI_RETRY_DELAYS",
        "retry_delays",
        DEFAULT_RETRY_DELAYS_SECONDS,
        _delays,
        "seconds before each retry",
        ",".join(map(str, DEFAULT_RETRY_DELAYS_SECONDS)),
    ),
    Setting(
        "IPAI_BREAKER_THRESHOLD",
        "breaker_threshold",
        5,
        _whole(1),
        "failures in a row that pause a destination",
    ),
    Setting(
        "IPAI_BREAKER_COOLDOWN_SECONDS",
        "breaker_cooldown_seconds",
        30.0,
        _positive,
        "how long a paused destination waits",
    ),
    Setting("SMTP_HOST", "smtp_host", "localhost", _text, "e-mail destinations' server"),
    Setting("SMTP_PORT", "smtp_port", 587, _whole(1), "e-mail destinations' port"),
    Setting("SMTP_SECURITY", "smtp_security", "starttls", _security, "starttls, tls or none"),
    Setting("SMTP_USERNAME", "smtp_username", None, _text, "e-mail login"),
    Setting("SMTP_PASSWORD", "smtp_password", None, _text, "e-mail password"),
    Setting("SMTP_FROM", "smtp_from", "ipai-bus@localhost", _text, "e-mail sender"),
)
DEFAULTS: Mapping[str, Any] = {setting.field: setting.default for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Everything the bus reads from its environment. Build with ``Settings.from_env()``; the
    defaults are SETTINGS' (declared there once)."""

    database_url: str | None = DEFAULTS["database_url"]
    home: Path | None = DEFAULTS["home"]
    config_dir: Path | None = DEFAULTS["config_dir"]
    webhook_secret_text: str | None = DEFAULTS["webhook_secret_text"]
    webhook_secret_file: Path | None = DEFAULTS["webhook_secret_file"]
    webhook_secrets: tuple[str, ...] = ()  # from the two above
    receiver_host: str = DEFAULTS["receiver_host"]
    receiver_port: int = DEFAULTS["receiver_port"]
    receiver_workers: int = DEFAULTS["receiver_workers"]
    receiver_threads: int = DEFAULTS["receiver_threads"]
    receiver_database_url: str | None = DEFAULTS["receiver_database_url"]
    metrics_token: str | None = DEFAULTS["metrics_token"]
    console_host: str = DEFAULTS["console_host"]
    console_port: int = DEFAULTS["console_port"]
    console_password_file: Path | None = DEFAULTS["console_password_file"]
    routes_file: Path | None = DEFAULTS["routes_file"]
    mattermost_webhook_url: str | None = DEFAULTS["mattermost_webhook_url"]
    odoo_base_url: str | None = DEFAULTS["odoo_base_url"]
    router_batch_size: int = DEFAULTS["router_batch_size"]
    router_lease_seconds: int = DEFAULTS["router_lease_seconds"]
    router_poll_seconds: float = DEFAULTS["router_poll_seconds"]
    router_listen: bool = DEFAULTS["router_listen"]
    router_concurrency: int = DEFAULTS["router_concurrency"]
    router_metrics_host: str = DEFAULTS["router_metrics_host"]
    router_metrics_port: int = DEFAULTS["router_metrics_port"]
    delivery_timeout_seconds: float = DEFAULTS["delivery_timeout_seconds"]
    max_attempts: int = DEFAULTS["max_attempts"]
    retry_delays: tuple[int, ...] = DEFAULTS["retry_delays"]
    breaker_threshold: int = DEFAULTS["breaker_threshold"]
    breaker_cooldown_seconds: float = DEFAULTS["breaker_cooldown_seconds"]
    smtp_host: str = DEFAULTS["smtp_host"]
    smtp_port: int = DEFAULTS["smtp_port"]
    smtp_security: str = DEFAULTS["smtp_security"]
    smtp_username: str | None = DEFAULTS["smtp_username"]
    smtp_password: str | None = DEFAULTS["smtp_password"]
    smtp_from: str = DEFAULTS["smtp_from"]
    # The environment as read, for routes files that name their secrets' variables.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; raises ConfigurationError naming the first bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.variable)
            if raw is not None and raw.strip() != "":
                values[setting.field] = setting.parse(setting.variable, raw)
        values["webhook_secrets"] = _webhook_secrets(
            values.get("webhook_secret_text"), values.get("webhook_secret_file")
        )
        return cls(**values, environment=dict(env))
