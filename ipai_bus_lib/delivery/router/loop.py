"""The router's loop: claim a batch, plan it, deliver it, settle it while the next is claimed;
wake on the outbox NOTIFY, poll only as a fallback, come back after the database does."""

from __future__ import annotations

import logging
import select
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ...core import tracing
from ...core.errors import DatabaseUnavailable
from ...core.memory import FreedMemoryReturner
from ...core.stored_event import StoredEvent
from ...storage import outbox
from ...storage.db import Database, connect
from ...storage.queries import load
from ..destinations import Destination, TokenBucket
from ..routes import RoutingTable
from .config import FIRST_RECONNECT_SECONDS, RouterConfig
from .delivering import Deliverer
from .leases import LeaseKeeper
from .metrics import RouterMetrics
from .planning import Attempt, Planner
from .settling import Death, Settler, death_line
from .traces import EventTraces

log = logging.getLogger("ipai_bus.router")
SQL = load("router")
# How long the start-up probe waits for its own notification, and how often a router polls when
# notifications cannot arrive (a transaction pooler hands each statement to any server session).
NOTIFY_PROBE_SECONDS = 2.0
POOLED_POLL_SECONDS = 0.5


class Router:
    """A worker: ``run()`` until ``stop()``; ``run_once()`` handles one claimed batch."""

    def __init__(
        self,
        config: RouterConfig,
        database: Database,
        routing: RoutingTable,
        destinations: Mapping[str, Destination],
        rate_limits: Mapping[str, TokenBucket] | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.config, self.database, self.routing = config, database, routing
        self.metrics = metrics
        self.running = False  # inside run(): what /healthz reports
        self._stopping = threading.Event()
        self.leases = LeaseKeeper(config, database, self._stopping)
        self.planner = Planner(config, database, routing, destinations)
        self.traces = EventTraces()
        self.deliverer = Deliverer(
            config, database, destinations, rate_limits or {}, self._stopping, self.traces
        )
        self.settler = Settler(
            config,
            database,
            on_settled=self.leases.let_go,
            on_recorded=metrics.observe_attempts if metrics else None,
            on_dead=self._report_death,
            traces=self.traces,
        )
        # Settling a batch (ack, fail, attempts) runs on its own connection while the next batch
        # is claimed: the database then works on two cores instead of one.
        self._settle_pool = ThreadPoolExecutor(1, thread_name_prefix="settle")
        self._settling: Future[None] | None = None
        # While a full batch is planned and delivered, the next one is claimed: a backlog keeps
        # the database busy claiming, delivering's Python and settling all at once.
        self._claim_pool = ThreadPoolExecutor(1, thread_name_prefix="claim")
        self._claimed_ahead: Future[list[StoredEvent]] | None = None
        self._freed_memory = FreedMemoryReturner()
        # None until probed: whether a LISTENing connection hears the outbox's NOTIFY.
        self.notifications_arrive: bool | None = None

    def _report_death(self, death: Death) -> None:
        """One structured log line per event given up, and its count by reason."""
        log.warning(death_line(self.config.worker, death))
        if self.metrics is not None:
            self.metrics.observe_death(death)

    @property
    def poll_seconds(self) -> float:
        """How long an idle router waits between claims when no notification wakes it: the
        configured interval, or at most POOLED_POLL_SECONDS when it was to listen and found that
        notifications do not arrive. A router told not to listen polls as configured."""
        if self.config.listen and self.notifications_arrive is False:
            return min(self.config.poll_seconds, POOLED_POLL_SECONDS)
        return self.config.poll_seconds

    def probe_notifications(self) -> bool:
        """LISTEN as the loop does, NOTIFY a token of this router's own from the pool, and see
        whether it arrives. Behind a transaction pooler it never does (an idle client is attached to no
        server session), and the router then polls every POOLED_POLL_SECONDS instead."""
        if not self.config.listen:
            self.notifications_arrive = False
            return False
        token = f"probe {uuid.uuid4().hex}"
        listener = self._listen()
        try:
            with self.database.autocommit() as cursor:
                cursor.execute(SQL["notify_probe"], {"token": token})
            self.notifications_arrive = _heard(listener, token, NOTIFY_PROBE_SECONDS)
        finally:
            _close_quietly(listener)
        if not self.notifications_arrive:
            log.warning(
                "router %s: notifications do not arrive on this connection (a transaction "
                "pooler?): polling every %.1f s instead; give the router a direct or "
                "session-pooler connection string (README: Supabase)",
                self.config.worker,
                self.poll_seconds,
            )
        return self.notifications_arrive

    # --- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end: in-flight deliveries finish, unstarted ones are handed back."""
        self._stopping.set()

    def run(self) -> None:
        """Deliver until stop() is called; survives the database going away and coming back."""
        listener = None
        self.running = True
        self.leases.start()
        backoff = FIRST_RECONNECT_SECONDS
        try:
            while not self._stopping.is_set():
                try:
                    if self.notifications_arrive is None:
                        self.probe_notifications()
                    if listener is None and self.notifications_arrive:
                        listener = self._listen()
                    handled = self._run_pipelined()
                    backoff = FIRST_RECONNECT_SECONDS
                    if handled < self.config.batch_size or not self.config.drain:
                        self._finish_settling()
                        self._freed_memory.when_idle()
                        self._wait_for_work(listener)
                except DatabaseUnavailable as exc:
                    # Soon at first, so delivery resumes within a second or two of the
                    # database's return; then less often, up to the poll interval.
                    log.warning("router %s: %s; retrying in %.1f s", self.config.worker, exc, backoff)
                    _close_quietly(listener)
                    listener = None
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, self.poll_seconds)
                except Exception:  # noqa: BLE001 - the router outlives its own bugs
                    # Whatever it was, the claimed events' leases run out and they come back
                    # (and go dead once their attempts are spent): the others keep flowing.
                    log.exception(
                        "router %s: unexpected error; going on in %.0f s",
                        self.config.worker,
                        self.poll_seconds,
                    )
                    _close_quietly(listener)
                    listener = None
                    self._stopping.wait(self.poll_seconds)
        finally:
            self.running = False
            _close_quietly(listener)
            self._hand_back_claimed_ahead()
            self._finish_settling(quietly=True)
            self._settle_pool.shutdown(wait=True)
            self._claim_pool.shutdown(wait=True)
            self.deliverer.close()

    def _listen(self) -> Any:  # a psycopg2 connection in autocommit, LISTENing
        listener = connect(self.database.dsn, application_name="ipai-bus router listener")
        listener.autocommit = True
        with listener.cursor() as cursor:
            cursor.execute(SQL["listen"])
        return listener

    def _wait_for_work(self, listener: Any) -> None:
        timeout = self.poll_seconds
        if self.config.drain:  # wake for the next scheduled retry rather than the next poll
            timeout = min(timeout, self._seconds_until_next_due())
        if listener is None:
            self._stopping.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices, so a stop request is noticed within 0.2 s.
            readable, _, _ = select.select([listener], [], [], min(remaining, 0.2))
            if readable:
                listener.poll()
                if listener.notifies:
                    listener.notifies.clear()
                    return

    def _seconds_until_next_due(self) -> float:
        with self.database.autocommit() as cursor:
            cursor.execute(SQL["seconds_until_next_due"])
            seconds = cursor.fetchone()[0]
        return self.poll_seconds if seconds is None else max(0.0, float(seconds))

    # --- one batch ----------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one batch, deliver it, settle it; returns how many events were claimed."""
        events, attempts, unrouted = self._claim_and_deliver()
        if events:
            self.settler.settle(events, attempts, unrouted)
        return len(events)

    def _run_pipelined(self) -> int:
        """As run_once, but the batch is settled in the background while the next is claimed."""
        events, attempts, unrouted = self._claim_and_deliver()
        try:
            self._finish_settling()
        finally:  # even when the previous batch could not be settled, this one is
            if events:
                self._settling = self._settle_pool.submit(
                    self.settler.settle, events, attempts, unrouted
                )
        return len(events)

    def _finish_settling(self, *, quietly: bool = False) -> None:
        settling, self._settling = self._settling, None
        if settling is None:
            return
        try:
            settling.result()
        except DatabaseUnavailable:
            if not quietly:
                raise  # the batch's leases run out and its events come back: nothing is lost

    def _claim(self) -> list[StoredEvent]:
        claimed_ns = tracing.now_ns()
        # One statement, its own transaction: claims take turns (claim_outbox's lock), and
        # autocommit ends this one's turn as the rows come back, not a round trip later.
        with self.database.autocommit() as cursor:
            events = outbox.claim(
                cursor,
                worker=self.config.worker,
                limit=self.config.batch_size,
                lease_seconds=self.config.lease_seconds,
            )
        self.leases.hold(events)
        self.traces.claimed(events, claimed_ns)
        return events

    def _next_batch(self) -> list[StoredEvent]:
        """The batch claimed ahead, else one claimed now; a full batch claims the next ahead."""
        ahead, self._claimed_ahead = self._claimed_ahead, None
        events = ahead.result() if ahead is not None else self._claim()
        if self.metrics is not None:
            self.metrics.observe_claim(len(events))
        backlog = len(events) == self.config.batch_size and self.config.drain
        if backlog and not self._stopping.is_set():
            self._claimed_ahead = self._claim_pool.submit(self._claim)
        return events

    def _hand_back_claimed_ahead(self) -> None:
        """A batch claimed ahead and never started goes back at once, its attempt given back."""
        ahead, self._claimed_ahead = self._claimed_ahead, None
        if ahead is None:
            return
        try:
            events = ahead.result()
            if events:
                with self.database.transaction() as cursor:
                    outbox.release(cursor, [event.id for event in events], worker=self.config.worker)
                self.leases.let_go(events)
                self.traces.forget(events)
        except Exception:  # noqa: BLE001 - their leases run out and they come back
            log.warning("router %s: a batch claimed ahead is left to its leases", self.config.worker)

    def _claim_and_deliver(self) -> tuple[list[StoredEvent], list[Attempt], list[StoredEvent]]:
        events = self._next_batch()
        if not events:
            return [], [], []
        try:
            attempts, unrouted = self.planner.plan(events)
            self.deliverer.deliver_all(attempts)
        except BaseException:
            self.leases.let_go(events)  # their leases run out and they come back
            self.traces.forget(events)
            raise
        return events, attempts, unrouted


def _close_quietly(connection: Any) -> None:
    if connection is not None:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


def _heard(listener: Any, token: str, seconds: float) -> bool:
    """Whether the notification carrying ``token`` reaches ``listener`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        select.select([listener], [], [], remaining)
        listener.poll()
        if any(notify.payload == token for notify in listener.notifies):
            listener.notifies.clear()
            return True
    return False
