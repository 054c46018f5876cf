"""The operator's subcommands of ``ipai-bus``: status, events show/tail, retry, purge.

They read and act on the database only; none of them starts a service.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ..core import exact_json
from ..core.errors import ConfigurationError, InvalidInput
from ..core.settings import Settings
from ..storage.db import UnreadableValue, connect, translate_error
from . import operations

UrlResolver = Callable[[Settings], str]


def _with_cursor(settings: Settings, resolve_url: UrlResolver, work: Callable[[Any], int]) -> int:
    """Run ``work`` with a cursor on an autocommit connection made for this one command."""
    import psycopg2

    conn = connect(resolve_url(settings), application_name="ipai-bus cli")
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            return work(cursor)
    except psycopg2.Error as exc:
        raise translate_error(exc) from exc
    finally:
        conn.close()


def _print_json(document: Any) -> None:
    print(exact_json.dumps(document, indent=2, default=str))


# --- status -----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    def work(cursor: Any) -> int:
        report = operations.status(cursor)
        if args.json:
            _print_json(report.to_json())
        else:
            print(render_status(report))
        return 0

    return _with_cursor(settings, resolve_url, work)


def render_status(report: operations.Status) -> str:
    """`ipai-bus status` as text: the outbox by status and its oldest waits, what is not
    completed by type, the latest dead events and why, paused destinations, sources shared by
    several Odoo databases, and the last hour's accepted events."""
    counts = report.by_status
    lines = [
        "Outbox",
        "  " + "  ".join(f"{name} {counts[name]}" for name in counts),
        f"  oldest pending: {operations.age(report.oldest_pending_seconds)}"
        + (
            f"   oldest failed (retrying): {operations.age(report.oldest_failed_seconds)}"
            if report.oldest_failed_seconds is not None
            else ""
        )
        + f"   expired leases: {report.expired_leases}"
        + (
            "  ← a router died holding these; they return on the next claim"
            if report.expired_leases
            else ""
        ),
    ]
    if report.held_by_order:
        lines.append(
            f"  waiting behind an earlier event of the same record: {report.held_by_order}"
            " (events of one record go in order; see ipai-bus events show ID)"
        )
    lines += ["", "Not completed, by type"]
    if report.by_type:
        lines.append(f"  {'event type':<28}{'status':<12}events")
        lines += [
            f"  {row['event_type']:<28}{row['status']:<12}{row['events']}" for row in report.by_type
        ]
    else:
        lines.append("  none: every event is delivered")
    if report.latest_dead:
        lines += ["", "Latest dead (ipai-bus events show ID; ipai-bus retry ID)"]
        for row in report.latest_dead:
            error = operations.shorten(row["last_error"] or "—", 110)
            lines.append(
                f"  {row['id']}  {row['event_type']:<24} {operations.when(row['updated_at'])}"
                f"  attempts {row['attempts']}\n      {error}"
            )
    if report.open_circuits:
        lines += ["", "Paused destinations (circuit open)"]
        lines += [
            f"  {row['destination']} {_pause(row)}: {operations.shorten(row['last_error'] or '', 90)}"
            for row in report.open_circuits
        ]
    if report.shared_sources:
        lines += ["", "Sources shared by several Odoo databases (last day): give each its own"]
        lines += [
            f"  {row['source']}: {row['databases']} databases (Settings > IPAI Bus > Source name)"
            for row in report.shared_sources
        ]
    lines += [
        "",
        f"Event log, last hour: {report.logged_last_hour} accepted"
        + "".join(f"\n  {name:<28}{count}" for name, count in report.logged_last_hour_by_type.items()),
    ]
    return "\n".join(lines)


# --- events -------------------------------------------------------------------------------------


def cmd_events_show(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    [event_id] = operations.parse_event_ids([args.id])

    def work(cursor: Any) -> int:
        history = operations.event_history(cursor, event_id)
        if history is None:
            print(f"ipai-bus: no event {event_id}", file=sys.stderr)
            return 1
        if args.json:
            _print_json(history)
        else:
            print(render_history(event_id, history))
        return 0

    return _with_cursor(settings, resolve_url, work)


def _payload_text(payload: Any) -> str:
    """The payload as JSON; one the bus cannot read, as stored (cut), saying so."""
    if isinstance(payload, UnreadableValue):
        return f"(cannot be read: {payload.reason}) {payload.text[:200]}…"
    return exact_json.dumps(payload)


def _next_try(row: dict) -> str:
    """When the event goes out next: only pending and failed events have a next try."""
    if row["status"] in ("pending", "failed"):
        return f"   next try {operations.when(row['available_at'])}"
    return ""


def _pause(circuit: dict) -> str:
    if circuit.get("trial_due"):  # the pause is over; the next event for it is the trial
        return "pause over, next delivery is a trial"
    return f"until {operations.when(circuit['open_until'])}"


def render_history(event_id: Any, history: dict[str, Any]) -> str:
    """`ipai-bus events show` as text: the event, its audit copy and every delivery attempt."""
    row = history["outbox"] or {}
    logged = history["event_log"] or {}
    source = row or logged
    lines = [
        f"Event {event_id}",
        f"  type {source.get('event_type')}   aggregate {source.get('aggregate_type')}"
        f" {source.get('aggregate_id')}   source {source.get('source')}",
        f"  idempotency key {source.get('idempotency_key')}",
    ]
    if row:
        lines.append(
            f"  status {row['status']}   attempts {row['attempts']}/{row['max_attempts']}"
            + _next_try(row)
            + f"   accepted {operations.when(row['created_at'])}"
        )
        if row["status"] in ("pending", "failed") and history.get("waiting_behind"):
            earlier = history["waiting_behind"]
            lines.append(
                f"  waiting behind event {earlier['id']} ({earlier['status']}), an earlier event"
                " of the same record: events of one record are delivered in order"
            )
        if row.get("last_error"):
            lines.append(f"  last error: {row['last_error']}")
    else:
        done = history["completion"] or {}
        lines.append(
            f"  status completed   attempts {done.get('attempts') or '-'}"
            f"   delivered {operations.when(done.get('delivered_at'))}"
            f"   accepted {operations.when(logged.get('received_at'))}"
        )
    lines.append(f"  payload {_payload_text(source.get('payload'))}")
    lines.append("Delivery attempts" if history["attempts"] else "No delivery attempt yet")
    for attempt in history["attempts"]:
        status = f" HTTP {attempt['http_status']}" if attempt["http_status"] else ""
        lines.append(
            f"  {operations.when(attempt['attempted_at'])}  #{attempt['attempt']}"
            f"  {attempt['destination']:<14} {attempt['outcome']:<10}{status}"
            f"  {attempt['duration_ms']:.0f} ms  {attempt['worker']}"
            + (f"\n      {attempt['error']}" if attempt["error"] else "")
        )
    for action in history["actions"]:
        lines.append(
            f"  {operations.when(action['acted_at'])}  {action['action']} by "
            f"{action['actor']}" + (f": {action['reason']}" if action["reason"] else "")
        )
    return "\n".join(lines)


def cmd_events_tail(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    def work(cursor: Any) -> int:
        after = max(0, operations.last_log_id(cursor) - args.lines)
        try:
            while True:
                for row in operations.events_since(cursor, after):
                    after = row["log_id"]
                    print(
                        f"{operations.when(row['received_at'])}  {row['event_id']}  "
                        f"{row['event_type']:<26} {row['aggregate_id']:<12} "
                        f"{row['status']}",
                        flush=True,
                    )
                if not args.follow:
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0

    return _with_cursor(settings, resolve_url, work)


# --- retry and purge ----------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    if not args.ids and not args.dead:
        raise ConfigurationError(
            "say what to retry: event ids (ipai-bus retry ID…), or --dead (narrow it with"
            " --type and --since)"
        )
    if args.ids and args.dead:
        raise ConfigurationError("name event ids, or use --dead (with --type/--since), not both")
    if args.ids and (args.type or args.since or args.include_failed):
        raise ConfigurationError("--type, --since and --include-failed go with --dead")
    since = _duration(args.since) if args.since else None
    explicit = operations.parse_event_ids(args.ids) if args.ids else []
    actor = args.by or operations.current_actor()

    def work(cursor: Any) -> int:
        ids = explicit
        if explicit:
            missing = [
                str(event_id)
                for event_id in explicit
                if event_id not in operations.existing_ids(cursor, explicit)
            ]
            if missing:
                raise InvalidInput(f"no such event: {', '.join(missing)}; nothing retried")
        else:
            ids = operations.select_for_retry(
                cursor, type_pattern=args.type, since=since, include_failed=args.include_failed
            )
            print(f"retrying {len(ids)} event(s)…", file=sys.stderr, flush=True)
        statuses = operations.statuses_of(cursor, [str(event_id) for event_id in ids])
        retried = operations.retry(cursor, ids, actor=actor, reason=args.reason)
        print(retry_summary(retried, actor, statuses))
        # Imported here: the router's modules load prometheus_client, which must not be loaded
        # before `serve` sets PROMETHEUS_MULTIPROC_DIR (its value class is fixed at import).
        from .wiring import types_without_route

        unrouted = types_without_route(settings, operations.types_of(cursor, ids)) if retried else []
        if unrouted:
            print(
                f"no route takes {', '.join(unrouted)} in the routes this command reads"
                f" ({settings.routes_file or 'the built-in ones'}): those events will go dead"
                " again; add a route and restart the routers first"
            )
        paused = [row["destination"] for row in operations.open_circuits(cursor)]
        if retried and paused:
            print(
                f"paused destinations ({', '.join(paused)}) hold their events until a trial"
                " delivery succeeds; `ipai-bus resume NAME` makes the trial now"
            )
        return 0

    return _with_cursor(settings, resolve_url, work)


def retry_summary(retried: int, actor: str, statuses_before: dict[str, str]) -> str:
    """What a retry did, claiming an audit record only when one was written."""
    left_alone: dict[str, int] = {}
    for status in statuses_before.values():
        if status not in ("failed", "dead"):
            left_alone[status] = left_alone.get(status, 0) + 1
    alone = ", ".join(f"{count} {status}" for status, count in sorted(left_alone.items()))
    if not retried:
        return (
            "nothing retried: only failed or dead events are"
            + (f" ({alone} left alone)" if alone else "")
            + "; no audit record written"
        )
    return f"{retried} event(s) back to pending (attempts reset), recorded as retried by {actor}" + (
        f"; left alone (only failed or dead events are retried): {alone}" if alone else ""
    )


def cmd_resume(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    actor = args.by or operations.current_actor()

    def work(cursor: Any) -> int:
        if operations.resume_destination(cursor, args.destination, actor=actor, reason=args.reason):
            print(
                f"destination {args.destination} resumed, recorded as resumed by {actor}: each"
                " router holding it paused makes its next delivery the trial (within a second)"
            )
            return 0
        paused = ", ".join(row["destination"] for row in operations.open_circuits(cursor))
        raise InvalidInput(
            f"destination {args.destination} is not paused; nothing to resume"
            + (f" (paused now: {paused})" if paused else " (none is paused)")
        )

    return _with_cursor(settings, resolve_url, work)


def cmd_purge(args: argparse.Namespace, settings: Settings, resolve_url: UrlResolver) -> int:
    older_than = _duration(args.completed_older_than)
    if older_than < operations.MIN_PURGE_AGE:
        raise ConfigurationError(
            f"--completed-older-than {args.completed_older_than}: at least 1h (recently completed"
            " events are kept for operators to look at)"
        )
    actor = args.by or operations.current_actor()

    def work(cursor: Any) -> int:
        print(
            f"purging completed events older than {args.completed_older_than}…",
            file=sys.stderr,
            flush=True,
        )
        deleted = operations.purge_completed(cursor, older_than, actor=actor)
        print(
            f"{deleted} completed event(s) purged: their idempotency keys are forgotten (a resend"
            " is accepted as new); the event_log and the delivery attempts keep them"
        )
        return 0

    return _with_cursor(settings, resolve_url, work)


def _duration(text: str) -> timedelta:
    try:
        return operations.parse_duration(text)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def add_operator_commands(commands: Any, resolve_url: UrlResolver) -> None:
    """Register status, events, retry, resume and purge on the main parser's subcommands."""

    def bind(handler: Callable[..., int]) -> Callable[[argparse.Namespace, Settings], int]:
        return lambda args, settings: handler(args, settings, resolve_url)

    status = commands.add_parser("status", help="what is pending, stuck or dead")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=bind(cmd_status))

    events = commands.add_parser("events", help="one event's history, or the latest events")
    actions = events.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="an event, its outbox state and every attempt")
    show.add_argument("id", help="the event id (a UUID)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=bind(cmd_events_show))
    tail = actions.add_parser("tail", help="the latest accepted events")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many to show first")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new ones")
    tail.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    tail.set_defaults(handler=bind(cmd_events_tail))

    retry = commands.add_parser("retry", help="put failed or dead events back to pending")
    retry.add_argument("ids", nargs="*", metavar="ID", help="event ids")
    retry.add_argument(
        "--dead", action="store_true", help="every dead event (narrow with --type and --since)"
    )
    retry.add_argument("--type", metavar="PATTERN", help="event type or prefix.*, with --dead")
    retry.add_argument("--since", metavar="AGE", help="only those that died within AGE (30m, 2d)")
    retry.add_argument(
        "--include-failed",
        action="store_true",
        help="with --dead: also retry failed events now instead of waiting",
    )
    retry.add_argument("--reason", help="why, for the audit trail")
    retry.add_argument("--by", help="who, for the audit trail (default user@host)")
    retry.set_defaults(handler=bind(cmd_retry))

    resume = commands.add_parser(
        "resume", help="try a paused destination now instead of waiting out its breaker"
    )
    resume.add_argument("destination", help="the destination's name in the routes file")
    resume.add_argument("--reason", help="why, for the audit trail")
    resume.add_argument("--by", help="who, for the audit trail (default user@host)")
    resume.set_defaults(handler=bind(cmd_resume))

    purge = commands.add_parser(
        "purge", help="forget old completed events' idempotency keys (not the log)"
    )
    purge.add_argument(
        "--completed-older-than", required=True, metavar="AGE", help="e.g. 30d; at least 1h"
    )
    purge.add_argument("--by", help="who, for the audit trail (default user@host)")
    purge.set_defaults(handler=bind(cmd_purge))
