"""How a router is set up: its configuration and the constants its parts share."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ...core.settings import DEFAULTS

NOTIFY_CHANNEL = "integration_outbox"
# A router's writes (claim, ack, fail, attempts) need not wait for the WAL flush: one lost in a
# database crash only means the event is delivered again, which at-least-once delivery allows.
# The events themselves were committed durably by whoever inserted them.
ROUTER_SESSION_SETTINGS = {"synchronous_commit": "off"}
# The latest moment a datetime can hold with a day to spare: no outside number goes past it.
LATEST_EPOCH_SECONDS = datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp()
FIRST_RECONNECT_SECONDS = 0.5
# No batch takes this long to deliver and settle; past it a lease is left to run out, so a bug
# can never pin events to a router for good.
MAX_HOLD_SECONDS = 15 * 60


def default_worker_name() -> str:
    """A name no other router has: host, process and a random suffix (leases are held by it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RouterConfig:
    """How a router claims and delivers (defaults: the bus's; the seed polled 30 s, batch 25)."""

    worker: str = field(default_factory=default_worker_name)
    batch_size: int = DEFAULTS["router_batch_size"]
    lease_seconds: int = DEFAULTS["router_lease_seconds"]
    poll_seconds: float = DEFAULTS["router_poll_seconds"]
    concurrency: int = DEFAULTS["router_concurrency"]
    listen: bool = DEFAULTS["router_listen"]
    # Claim again at once while batches come back full. Off, it takes one batch per poll, as the
    # seed's n8n schedule did (kept for the benchmark's baseline).
    drain: bool = True
    retry_delays: tuple[int, ...] = DEFAULTS["retry_delays"]
    breaker_threshold: int = DEFAULTS["breaker_threshold"]
    breaker_cooldown_seconds: float = DEFAULTS["breaker_cooldown_seconds"]
    odoo_base_url: str | None = None
