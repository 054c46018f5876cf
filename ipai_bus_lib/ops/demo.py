"""`ipai-bus demo`: one signed sample of each of the 14 event types through the real bus."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..core.envelope import Envelope
from ..core.samples import all_samples
from ..core.sender import post_event
from ..core.settings import Settings
from ..delivery.formatters import format_event
from ..ingest.receiver import READY_PATH
from ..storage.database_location import running_database_url
from ..storage.db import connect
from . import operations
from .send import receiver_url, signing_secret
from .stack import Stack, receiver_healthy


def run_demo(settings: Settings, *, timeout: float) -> int:
    """Use the running bus if one answers, else start one for the demo and stop it after."""
    started = time.monotonic()
    log_path: Path | None = None
    with ExitStack() as cleanup:
        health = receiver_url(settings, READY_PATH)
        if receiver_healthy(health):
            print(f"demo: using the bus already running at {receiver_url(settings)}")
            database_url = running_database_url(settings)
        else:
            log_path = Path(tempfile.mkdtemp(prefix="ipai-demo-")) / "bus.log"
            print(f"demo: starting the bus (its own output goes to {log_path})…", flush=True)
            stack = cleanup.enter_context(
                Stack(settings, output=cleanup.enter_context(open(log_path, "w")))
            )
            database_url = stack.database_url
        sent = send_samples(settings)
        delivered = wait_for_delivery(database_url, [event_id for _, event_id in sent], timeout)
        reasons = dead_reasons(database_url, [i for i, status in delivered.items() if status == "dead"])
        show_messages(sent, delivered, settings, reasons)
        elapsed = time.monotonic() - started
        print(
            f"demo: sent {len(all_samples())}, stored {len(sent)}, delivered "
            f"{sum(1 for _, event_id in sent if delivered.get(event_id) == 'completed')}, "
            f"elapsed {elapsed:.1f} s"
        )
    ok = len(sent) == len(all_samples()) and all(
        delivered.get(event_id) == "completed" for _, event_id in sent
    )
    if log_path is not None:
        if ok:  # nothing to look into: the bus's output goes with the demo
            shutil.rmtree(log_path.parent, ignore_errors=True)
        else:
            print(f"demo: the bus's output is kept in {log_path}")
    return 0 if ok else 1


def send_samples(settings: Settings) -> list[tuple[Envelope, str]]:
    secret, url, run = signing_secret(settings), receiver_url(settings), uuid.uuid4().hex[:8]
    sent = []
    for envelope in all_samples():
        status, answer = post_event(
            url, envelope, secret=secret, key=f"demo:{run}:{envelope.event_type}"
        )
        if status == 200:
            sent.append((envelope, answer["event_id"]))
        else:
            print(f"demo: {envelope.event_type} refused: HTTP {status} {answer}", file=sys.stderr)
    return sent


def wait_for_delivery(database_url: str, event_ids: list[str], timeout: float) -> dict[str, Any]:
    """Each event's outbox status once all are completed or dead, or when time runs out."""
    conn = connect(database_url, application_name="ipai-bus demo")
    conn.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        while True:
            with conn.cursor() as cursor:
                statuses = operations.statuses_of(cursor, event_ids)
            settled = all(statuses.get(event_id) in ("completed", "dead") for event_id in event_ids)
            if settled or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)
    finally:
        conn.close()


def dead_reasons(database_url: str, event_ids: list[str]) -> dict[str, str]:
    """Why each of the dead ``event_ids`` is dead (its last error)."""
    if not event_ids:
        return {}
    conn = connect(database_url, application_name="ipai-bus demo")
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            return operations.last_errors_of(cursor, event_ids)
    finally:
        conn.close()


def show_messages(
    sent: list[tuple[Envelope, str]],
    delivered: dict[str, Any],
    settings: Settings,
    reasons: dict[str, str] | None = None,
) -> None:
    reasons = reasons or {}
    for envelope, event_id in sent:
        message = format_event(
            envelope.event_type, envelope.payload, odoo_base_url=settings.odoo_base_url
        )
        print(f"\n[{delivered.get(event_id, 'not seen')}] {envelope.event_type} {event_id}")
        if event_id in reasons:
            print(f"  why it is dead: {reasons[event_id]}")
            print(f"  (ipai-bus events show {event_id}; ipai-bus retry {event_id} once fixed)")
        print(message.markdown)
    print()
