"""Leases: a router renews the leases of the events it still holds, so no other router takes
them while a slow destination answers; never for longer than MAX_HOLD_SECONDS."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from ...core.stored_event import StoredEvent
from ...storage import outbox
from ...storage.db import Database
from .config import MAX_HOLD_SECONDS, RouterConfig

log = logging.getLogger("ipai_bus.router")


class LeaseKeeper:
    """Holds claimed events until they are settled and renews their leases meanwhile."""

    def __init__(self, config: RouterConfig, database: Database, stopping: threading.Event) -> None:
        self.config, self.database, self._stopping = config, database, stopping
        self._held: dict[uuid.UUID, float] = {}
        self._held_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start renewing (once; again after the thread died)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._keep_leases, daemon=True, name="lease-keeper")
            self._thread.start()

    def _keep_leases(self) -> None:
        """Renew held leases every third of a lease, so none runs out under a delivery."""
        interval = max(self.config.lease_seconds / 3, 0.5)
        while not self._stopping.wait(interval):
            oldest = time.monotonic() - MAX_HOLD_SECONDS
            with self._held_lock:
                held = [event_id for event_id, since in self._held.items() if since > oldest]
            if not held:
                continue
            try:
                with self.database.autocommit() as cursor:
                    outbox.extend_leases(
                        cursor, held, worker=self.config.worker, lease_seconds=self.config.lease_seconds
                    )
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning(
                    "router %s: could not renew %d lease(s): %s", self.config.worker, len(held), exc
                )

    def hold(self, events: list[StoredEvent]) -> None:
        """Keep renewing the leases of ``events`` until let_go."""
        now = time.monotonic()
        with self._held_lock:
            self._held.update((event.id, now) for event in events)

    def let_go(self, events: list[StoredEvent]) -> None:
        """Stop renewing the leases of ``events`` (settled or handed back)."""
        with self._held_lock:
            for event in events:
                self._held.pop(event.id, None)
