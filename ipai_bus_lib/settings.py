"""Configuration: frozen dataclasses, read from the environment here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigurationError
from .outbox import DEFAULT_RETRY_DELAYS_SECONDS

MIN_SECRET_LENGTH = 16


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


def _webhook_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """IPAI_WEBHOOK_SECRET, else the secrets in the file IPAI_WEBHOOK_SECRET_FILE names."""
    if env.get("IPAI_WEBHOOK_SECRET"):
        return parse_secrets(env["IPAI_WEBHOOK_SECRET"])
    path = env.get("IPAI_WEBHOOK_SECRET_FILE")
    if not path:
        return ()
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"IPAI_WEBHOOK_SECRET_FILE: cannot read {path}: {exc.strerror}",
            setting="IPAI_WEBHOOK_SECRET_FILE",
        ) from None
    return parse_secrets(text.replace("\n", ","), setting="IPAI_WEBHOOK_SECRET_FILE")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}", setting=name) from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}", setting=name)
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}", setting=name) from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {raw}", setting=name)
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1/0, true/false, yes/no or on/off; got {raw!r}",
                             setting=name)


def _delays(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        delays = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ConfigurationError(
            f"{name} must be comma-separated seconds, e.g. 30,90,300; got {raw!r}", setting=name
        ) from None
    if not delays or min(delays) < 0:
        raise ConfigurationError(f"{name} must list non-negative seconds", setting=name)
    return delays


@dataclass(frozen=True)
class Settings:
    """Everything the bus reads from its environment. Build with ``Settings.from_env()``."""

    database_url: str | None = None
    home: Path | None = None
    webhook_secrets: tuple[str, ...] = ()
    receiver_host: str = "127.0.0.1"
    receiver_port: int = 8787
    receiver_workers: int = 2
    receiver_threads: int = 8
    odoo_base_url: str | None = None
    max_attempts: int = 4
    retry_delays: tuple[int, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    routes_file: Path | None = None
    router_batch_size: int = 25
    router_lease_seconds: int = 60
    router_poll_seconds: float = 5.0
    router_concurrency: int = 16
    router_listen: bool = True
    delivery_timeout_seconds: float = 10.0
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    metrics_token: str | None = None
    # The receiver's own connection (a role in ipai_bus_ingest); DATABASE_URL when unset.
    receiver_database_url: str | None = None
    # The environment as read, for destinations that name their secrets' variables.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; raises ConfigurationError naming the first bad variable."""
        env = os.environ if env is None else env
        home = env.get("IPAI_BUS_HOME")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            home=Path(home).expanduser() if home else None,
            webhook_secrets=_webhook_secrets(env),
            receiver_host=env.get("IPAI_RECEIVER_HOST") or "127.0.0.1",
            receiver_port=_int(env, "IPAI_RECEIVER_PORT", 8787, minimum=1),
            receiver_workers=_int(env, "IPAI_RECEIVER_WORKERS", 2, minimum=1),
            receiver_threads=_int(env, "IPAI_RECEIVER_THREADS", 8, minimum=1),
            odoo_base_url=(env.get("ODOO_BASE_URL") or "").rstrip("/") or None,
            max_attempts=_int(env, "IPAI_MAX_ATTEMPTS", 4, minimum=1),
            retry_delays=_delays(env, "IPAI_RETRY_DELAYS", DEFAULT_RETRY_DELAYS_SECONDS),
            routes_file=Path(env["IPAI_ROUTES_FILE"]) if env.get("IPAI_ROUTES_FILE") else None,
            router_batch_size=_int(env, "IPAI_ROUTER_BATCH_SIZE", 25, minimum=1),
            router_lease_seconds=_int(env, "IPAI_ROUTER_LEASE_SECONDS", 60, minimum=1),
            router_poll_seconds=_float(env, "IPAI_ROUTER_POLL_SECONDS", 5.0),
            router_concurrency=_int(env, "IPAI_ROUTER_CONCURRENCY", 16, minimum=1),
            router_listen=_flag(env, "IPAI_ROUTER_LISTEN", True),
            delivery_timeout_seconds=_float(env, "IPAI_DELIVERY_TIMEOUT_SECONDS", 10.0),
            breaker_threshold=_int(env, "IPAI_BREAKER_THRESHOLD", 5, minimum=1),
            breaker_cooldown_seconds=_float(env, "IPAI_BREAKER_COOLDOWN_SECONDS", 30.0),
            metrics_token=env.get("IPAI_METRICS_TOKEN") or None,
            receiver_database_url=env.get("IPAI_RECEIVER_DATABASE_URL") or None,
            environment=dict(env),
        )
