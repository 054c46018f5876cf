"""The ``ipai-bus`` command line: one subcommand per operator task, one clear line on error."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..core.contract import MAX_BATCH_EVENTS
from ..core.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidArgument,
    InvalidInput,
    IpaiBusError,
)
from ..core.settings import Settings, active_secrets
from ..storage.database_location import database_url, embedded_cluster, running_database_url
from .operator_cli import add_operator_commands
from .reference import cmd_routes_check, cmd_types

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

if TYPE_CHECKING:  # the server extra: imported when a command needs it
    from ..delivery.router import Router
    from .stack import Stack


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage.migrator import migrate

    applied = migrate(database_url(settings))
    print(
        f"applied {len(applied)} migration(s): {', '.join(applied)}"
        if applied
        else "database is up to date"
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ..ingest.server import ServerConfig, serve

    secrets = active_secrets(settings)
    if not secrets:
        raise ConfigurationError(
            "no webhook secret: set IPAI_WEBHOOK_SECRET (or IPAI_WEBHOOK_SECRET_FILE), or run"
            " `ipai-bus up` once to make one; `ipai-bus secret new` prints a new one",
            setting="IPAI_WEBHOOK_SECRET",
        )
    url = settings.receiver_database_url or database_url(settings)
    config = ServerConfig(
        host=args.host or settings.receiver_host,
        port=args.port or settings.receiver_port,
        workers=args.workers or settings.receiver_workers,
        threads=args.threads or settings.receiver_threads,
        max_attempts=settings.max_attempts,
        metrics_token=settings.metrics_token,
    )
    serve(config, database_url=url, secrets=secrets)
    return EXIT_OK


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from .wiring import check_routing, make_router

    check_routing(settings)  # before the database is started for nothing
    cluster = None if settings.database_url else embedded_cluster(settings)
    started_here = cluster is not None and not cluster.is_running()
    try:
        url = database_url(settings)
        if cluster is not None:  # the bus's own database: brought up to date, as `up` does
            from ..storage.migrator import migrate

            migrate(url)
        else:
            require_current_schema(url)
        _run_router(make_router(settings, url, worker=args.worker), settings)
    finally:
        if started_here and cluster is not None:  # a database this command started is stopped
            cluster.stop()
    return EXIT_OK


def require_current_schema(url: str) -> None:
    """Refuse to run against a database that misses migrations (ConfigurationError)."""
    from ..storage.readiness import pending_migrations

    missing = pending_migrations(url)
    if missing:
        raise ConfigurationError(
            f"the database misses {len(missing)} migration(s) ({', '.join(missing)}):"
            " run `ipai-bus migrate` (or `supabase db push`) first",
            setting="DATABASE_URL",
        )


def _run_router(router: Router, settings: Settings) -> None:
    from ..core.stop_signals import call_on_stop_signal, ignore_stop_signals

    call_on_stop_signal(router.stop)
    endpoints = _start_endpoints(router, settings)
    try:
        listening = router.probe_notifications()
    except DatabaseUnavailable:  # the loop waits for the database, then probes
        listening = router.config.listen
    print(
        f"router {router.config.worker}: batch {router.config.batch_size}, "
        f"{'LISTEN + ' if listening else ''}poll every {router.poll_seconds:g} s",
        file=sys.stderr,
        flush=True,
    )
    try:
        router.run()
    finally:
        if endpoints is not None:
            endpoints.close()
        ignore_stop_signals()
        from ..core import tracing

        tracing.flush()  # the last batches' spans, before the process exits


def _start_endpoints(router: Router, settings: Settings) -> Any:
    """The router's /metrics, /healthz and /readyz, unless IPAI_ROUTER_METRICS_PORT is 0. A port
    in use (another router on this machine) is said on one line; routing goes on."""
    from ..delivery.router.endpoints import RouterEndpoints

    if not settings.router_metrics_port or router.metrics is None:
        return None
    host, port = settings.router_metrics_host, settings.router_metrics_port
    try:
        endpoints = RouterEndpoints(router, router.metrics, host, port).start()
    except OSError as exc:
        print(
            f"router {router.config.worker}: no metrics endpoint: {host}:{port} {exc.strerror}"
            " (set IPAI_ROUTER_METRICS_PORT; 0 turns it off)",
            file=sys.stderr,
            flush=True,
        )
        return None
    print(
        f"router {router.config.worker}: metrics, health and readiness at http://{host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    return endpoints


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url and args.action != "url":
        raise ConfigurationError(
            "DATABASE_URL is set: the embedded PostgreSQL is not in use", setting="DATABASE_URL"
        )
    if args.action == "stop":
        embedded_cluster(settings).stop()
        print("embedded PostgreSQL stopped")
        return EXIT_OK
    url = database_url(settings)
    print(url if args.action == "url" else "embedded PostgreSQL running")
    return EXIT_OK


def cmd_secret_new(args: argparse.Namespace, settings: Settings) -> int:
    from ..core.secret_files import new_webhook_secret, write_private_file
    from ..core.signing import new_standard_webhooks_secret

    secret = new_standard_webhooks_secret() if args.whsec else new_webhook_secret()
    if args.output:
        try:
            write_private_file(Path(args.output), secret + "\n", exclusive=not args.force)
        except FileExistsError:
            raise ConfigurationError(f"{args.output} exists; pass --force to replace it") from None
        print(f"new secret written to {args.output} (mode 0600)")
    else:
        print(secret)
    return EXIT_OK


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    import threading

    from ..core.stop_signals import call_on_stop_signal, ignore_stop_signals
    from .stack import Stack, require_free_ports
    from .wiring import check_routing

    require_free_ports(settings)
    check_routing(settings)  # a wrong routes file is said before anything starts
    stopping = threading.Event()
    call_on_stop_signal(stopping.set)
    print("ipai-bus: starting…", file=sys.stderr, flush=True)
    with Stack(settings, console=True) as stack:
        print(describe_stack(stack), flush=True)
        while not stopping.wait(0.5):
            assert stack.supervisor is not None
            stack.supervisor.check()
        print("ipai-bus: stopping…", file=sys.stderr, flush=True)
    ignore_stop_signals()
    print("ipai-bus: stopped", file=sys.stderr)
    return EXIT_OK


def describe_stack(stack: Stack) -> str:
    """What `up` started, where, and with which secret (its first characters only)."""
    from ..core.secret_files import masked

    settings = stack.settings
    where = f"from {stack.secret_file} (mode 0600)" if stack.secret_file else "from IPAI_WEBHOOK_SECRET"
    database = (
        "DATABASE_URL"
        if settings.database_url
        else f"embedded PostgreSQL in {embedded_cluster(settings).data_dir}"
    )
    routes = settings.routes_file or (
        "default routes → Mattermost" if settings.mattermost_webhook_url else "default routes → console"
    )
    return (
        f"ipai-bus is up (Ctrl-C stops it)\n"
        f"  webhook URL  {stack.webhook_url}\n"
        f"  secret       {masked(stack.secret())} {where}\n"
        f"  database     {database}\n"
        f"  routing      {routes}\n"
        + console_line(stack)
        + metrics_line(settings)
        + "  status       ipai-bus status"
    )


def metrics_line(settings: Settings) -> str:
    """Where Prometheus scrapes the router and the receiver (deploy/prometheus/ has the rules)."""
    from .send import receiver_url

    router = (
        f"http://{settings.router_metrics_host}:{settings.router_metrics_port}/metrics"
        if settings.router_metrics_port
        else "off (IPAI_ROUTER_METRICS_PORT=0)"
    )
    return f"  metrics      router {router}, receiver {receiver_url(settings, '/metrics')}\n"


def console_line(stack: Stack) -> str:
    """Where the console is and where its password is kept (never the password itself)."""
    from .console import console_password_file

    settings = stack.settings
    if not stack.console:
        return ""
    return (
        f"  console      http://{settings.console_host}:{settings.console_port}"
        f" (password in {console_password_file(settings)})\n"
    )


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from .console import serve_console

    url = running_database_url(settings)
    serve_console(
        settings, url, host=args.host or settings.console_host, port=args.port or settings.console_port
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, timeout=args.timeout)


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from .send import send_from_arguments

    return send_from_arguments(args, settings)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want at least 1, got {value}")
    return value


def _batch_size(text: str) -> int:
    value = _positive(text)
    if value > MAX_BATCH_EVENTS:
        raise argparse.ArgumentTypeError(f"a batch holds at most {MAX_BATCH_EVENTS} events, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _default(variable: str) -> str:
    """What an option falls back to, as this environment sets it: `--help` says the truth."""
    from ..core.settings import SETTINGS

    [entry] = [entry for entry in SETTINGS if entry.variable == variable]
    value = os.environ.get(variable, "").strip()
    if value:
        return f"default {value}, from {variable}"
    return f"default {entry.shown_default or entry.default}; {variable} sets another"


def build_parser() -> argparse.ArgumentParser:
    """The ``ipai-bus`` argument parser: one subcommand per operator task."""
    parser = argparse.ArgumentParser(
        prog="ipai-bus",
        description="IPAI integration bus: receive signed Odoo events, store them, route them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser("migrate", help="apply the database migrations (idempotent)")
    migrate.set_defaults(handler=cmd_migrate)

    serve = commands.add_parser("serve", help="run the receiver (the webhook endpoint)")
    serve.add_argument("--host", help=f"address to listen on ({_default('IPAI_RECEIVER_HOST')})")
    serve.add_argument("--port", type=_port, help=f"port ({_default('IPAI_RECEIVER_PORT')})")
    serve.add_argument(
        "--workers", type=_positive, help=f"worker processes ({_default('IPAI_RECEIVER_WORKERS')})"
    )
    serve.add_argument(
        "--threads", type=_positive, help=f"threads per worker ({_default('IPAI_RECEIVER_THREADS')})"
    )
    serve.set_defaults(handler=cmd_serve)

    route = commands.add_parser("route", help="run a router worker (run several to scale out)")
    route.add_argument("--worker", help="this worker's name (default host:pid:random)")
    route.set_defaults(handler=cmd_route)

    up = commands.add_parser("up", help="run the whole bus (database, receiver, router) until Ctrl-C")
    up.set_defaults(handler=cmd_up)

    demo = commands.add_parser(
        "demo",
        help="send one signed sample of each of the 14 event "
        "types through the bus and show their delivery",
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for delivery")
    demo.set_defaults(handler=cmd_demo)

    send = commands.add_parser(
        "send", help="sign and send one event, a batch, or a load of events to a receiver"
    )
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--type", dest="event_type", help="event type, e.g. expense.submitted")
    what.add_argument(
        "--file",
        help='a JSON file holding one event envelope, or a batch {"events": [...]} (each event'
        " with its idempotency_key)",
    )
    send.add_argument(
        "--aggregate-id", help="the record's id (with --type; with --sample, instead of the sample's)"
    )
    send.add_argument("--aggregate-type", help="default: the catalog's for --type")
    send.add_argument("--payload", help="the payload as a JSON object (with --type)")
    send.add_argument("--sample", action="store_true", help="with --type: a realistic sample payload")
    send.add_argument("--key", help="idempotency key (default: a new one)")
    send.add_argument("--url", help="receiver URL (default: this machine's receiver)")
    send.add_argument(
        "--count",
        type=_positive,
        help="load mode: send this many events like the one described (each its own record and"
        " key) in batches, and print the rate",
    )
    send.add_argument(
        "--batch-size",
        type=_batch_size,
        default=500,
        help="events per request with --count (default 500, at most 1000)",
    )
    send.set_defaults(handler=cmd_send)

    add_operator_commands(commands, running_database_url)

    console = commands.add_parser(
        "console", help="the operator console (web page) alone; `up` starts it too"
    )
    console.add_argument("--host", help=_default("IPAI_CONSOLE_HOST"))
    console.add_argument("--port", type=_port, help=_default("IPAI_CONSOLE_PORT"))
    console.set_defaults(handler=cmd_console)

    types = commands.add_parser("types", help="the 14 event types, their records and payload fields")
    types_format = types.add_mutually_exclusive_group()
    types_format.add_argument("--json", action="store_true", help="machine-readable output")
    types_format.add_argument("--markdown", action="store_true", help="as the README's table")
    types.set_defaults(handler=cmd_types)

    routes = commands.add_parser("routes", help="check a routes file before a router uses it")
    routes_commands = routes.add_subparsers(dest="routes_command", metavar="ACTION", required=True)
    routes_check = routes_commands.add_parser(
        "check", help="load FILE as a router would (destinations, secrets) and show what goes where"
    )
    routes_check.add_argument("file", metavar="FILE")
    routes_check.set_defaults(handler=cmd_routes_check)

    db = commands.add_parser("db", help="the embedded PostgreSQL: start, stop, print its URL")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(handler=cmd_db)

    secret = commands.add_parser("secret", help="webhook secrets")
    secret_commands = secret.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    secret_new = secret_commands.add_parser("new", help="make a new random webhook secret")
    secret_new.add_argument(
        "--output", "-o", metavar="FILE", help="write it to FILE (mode 0600) instead of printing it"
    )
    secret_new.add_argument("--force", action="store_true", help="replace FILE if it exists")
    secret_new.add_argument(
        "--whsec",
        action="store_true",
        help="a Standard Webhooks secret (whsec_ + base64 of 32 bytes) for an http destination"
        " and its verifier (n8n, a service), instead of the Odoo-to-bus secret",
    )
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
    except (InvalidInput, InvalidArgument) as exc:
        print(f"ipai-bus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        print(f"ipai-bus: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except IpaiBusError as exc:
        print(f"ipai-bus: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ipai-bus status | head`): that is not an error. Point stdout at
        # /dev/null so the interpreter's last flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
