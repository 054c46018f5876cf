"""The ``ipai-bus`` command line: one subcommand per operator task, one clear line on error."""

from __future__ import annotations

import argparse
import secrets as secrets_module
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigurationError, DatabaseUnavailable, IpaiBusError
from .settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

Handler = Callable[[argparse.Namespace, Settings], int]


def database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the embedded cluster's URL (started if it is not running)."""
    if settings.database_url:
        return settings.database_url
    return embedded_cluster(settings).ensure_running()


def embedded_cluster(settings: Settings):  # -> EmbeddedPostgres, imported lazily (server extra)
    from .embedded import EmbeddedPostgres, default_home

    return EmbeddedPostgres(settings.home or default_home())


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .migrator import migrate

    applied = migrate(database_url(settings))
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied
          else "database is up to date")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import ServerConfig, serve

    if not settings.webhook_secrets:
        raise ConfigurationError(
            "no webhook secret: set IPAI_WEBHOOK_SECRET (or IPAI_WEBHOOK_SECRET_FILE);"
            " `ipai-bus secret new` makes one", setting="IPAI_WEBHOOK_SECRET")
    url = database_url(settings)
    config = ServerConfig(
        host=args.host or settings.receiver_host, port=args.port or settings.receiver_port,
        workers=args.workers or settings.receiver_workers,
        threads=args.threads or settings.receiver_threads)
    serve(config, database_url=url, secrets=settings.webhook_secrets)
    return EXIT_OK


def make_router(settings: Settings, url: str, *, worker: str | None = None):  # -> Router
    """A router wired from the settings: routes file (or the default), destinations, limits."""
    from .db import Database
    from .destinations import TokenBucket, build_destination
    from .routes import load_routing
    from .router import ROUTER_SESSION_SETTINGS, Router, RouterConfig

    routing = load_routing(settings.routes_file, settings.environment)
    destinations = {name: build_destination(spec, settings.environment,
                                            timeout=settings.delivery_timeout_seconds)
                    for name, spec in routing.destinations.items()}
    limits = {name: TokenBucket(spec.rate_per_second, spec.burst)
              for name, spec in routing.destinations.items() if spec.rate_per_second}
    config = RouterConfig(
        batch_size=settings.router_batch_size, lease_seconds=settings.router_lease_seconds,
        poll_seconds=settings.router_poll_seconds, concurrency=settings.router_concurrency,
        listen=settings.router_listen, retry_delays=settings.retry_delays,
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_seconds=settings.breaker_cooldown_seconds,
        odoo_base_url=settings.odoo_base_url,
        **({"worker": worker} if worker else {}))
    database = Database(url, max_size=4, application_name="ipai-bus router",
                        settings=ROUTER_SESSION_SETTINGS)
    return Router(config, database, routing, destinations, limits)


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    router = make_router(settings, database_url(settings), worker=args.worker)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: router.stop())
    print(f"router {router.config.worker}: batch {router.config.batch_size}, "
          f"{'LISTEN + ' if router.config.listen else ''}poll every "
          f"{router.config.poll_seconds:g} s", file=sys.stderr, flush=True)
    router.run()
    return EXIT_OK


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url and args.action != "url":
        raise ConfigurationError(
            "DATABASE_URL is set: the embedded PostgreSQL is not in use", setting="DATABASE_URL")
    if args.action == "stop":
        embedded_cluster(settings).stop()
        print("embedded PostgreSQL stopped")
        return EXIT_OK
    url = database_url(settings)
    print(url if args.action == "url" else "embedded PostgreSQL running")
    return EXIT_OK


def cmd_secret_new(args: argparse.Namespace, settings: Settings) -> int:
    secret = secrets_module.token_hex(32)
    if args.output:
        _write_private(Path(args.output), secret + "\n")
        print(f"new secret written to {args.output} (mode 0600)")
    else:
        print(secret)
    return EXIT_OK


def _write_private(path: Path, text: str) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipai-bus",
        description="IPAI integration bus: receive signed Odoo events, store them, route them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser("migrate", help="apply the database migrations (idempotent)")
    migrate.set_defaults(handler=cmd_migrate)

    serve = commands.add_parser("serve", help="run the receiver (the webhook endpoint)")
    serve.add_argument("--host", help="address to listen on (default IPAI_RECEIVER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default IPAI_RECEIVER_PORT or 8787)")
    serve.add_argument("--workers", type=_positive, help="worker processes (default 2)")
    serve.add_argument("--threads", type=_positive, help="threads per worker (default 8)")
    serve.set_defaults(handler=cmd_serve)

    route = commands.add_parser("route", help="run a router worker (run several to scale out)")
    route.add_argument("--worker", help="this worker's name (default host:pid:random)")
    route.set_defaults(handler=cmd_route)

    db = commands.add_parser("db", help="the embedded PostgreSQL: start, stop, print its URL")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(handler=cmd_db)

    secret = commands.add_parser("secret", help="webhook secrets")
    secret_commands = secret.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    secret_new = secret_commands.add_parser("new", help="make a new random webhook secret")
    secret_new.add_argument("--output", "-o", metavar="FILE",
                            help="write it to FILE (mode 0600) instead of printing it")
    secret_new.set_defaults(handler=cmd_secret_new)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.handler(args, settings))
    except ConfigurationError as exc:
        print(f"ipai-bus: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        print(f"ipai-bus: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except IpaiBusError as exc:
        print(f"ipai-bus: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
