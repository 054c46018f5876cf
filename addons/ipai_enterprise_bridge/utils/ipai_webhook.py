"""Odoo's side of the wire contract: build, sign and post events with the bus library.

No second implementation of the signing rule, the event catalog or the sender lives here: all
come from ipai_bus_lib (the CLI posts through the same SignedSender). ``send_ipai_event`` (the
seed's entry point) only queues the event in Odoo's own outbox, in the caller's transaction;
the dispatch cron posts it after commit.
"""

import logging

from odoo import fields

from ipai_bus_lib.core import exact_json, tracing
from ipai_bus_lib.core.batch import TRACE_FIELD_BYTES, parse_batch_event
from ipai_bus_lib.core.catalog import build_payload, lookup
from ipai_bus_lib.core.contract import MAX_BATCH_BYTES
from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.errors import ConfigurationError
from ipai_bus_lib.core.odoo_key import idempotency_key
from ipai_bus_lib.core.sender import ReceiverUnreachable, SignedSender

_logger = logging.getLogger(__name__)

# Spans of Odoo's posts (the otel extra in Odoo's Python, OTEL_* set) go out as this service,
# unless OTEL_SERVICE_NAME names another.
tracing.set_service_name("odoo")

URL_PARAMETER = "ipai.webhook.url"
SECRET_PARAMETER = "ipai.webhook.secret"
SOURCE_PARAMETER = "ipai.webhook.source"
POST_TIMEOUT_SECONDS = 10


def send_ipai_event(env, event_type, record, values, *, aggregate_id=None, key_record=None, stamp=None):
    """Queue one catalogued event about ``record`` in Odoo's outbox (same transaction).

    ``values`` are the payload fields (catalog order is applied); the idempotency key is
    ``{event_type}:{record.id}:{write_date.timestamp()}`` with the write_date of ``key_record``
    (default ``record``), or ``stamp`` when given (a daily event passes its day, so the key
    itself allows one a day). A transition queued already is skipped. Returns the rows queued.
    """
    return send_ipai_events(
        env,
        [
            ipai_event(
                event_type, record, values, aggregate_id=aggregate_id, key_record=key_record, stamp=stamp
            )
        ],
    )


def ipai_event(
    event_type, record, values, *, aggregate_id=None, key_record=None, stamp=None, occurred_at=None
):
    """One event to queue, as send_ipai_events takes them (see send_ipai_event).

    ``occurred_at`` is when the business fact happened (naive UTC), when that is not now."""
    spec = lookup(event_type)
    if spec is None:
        raise ValueError(f"{event_type} is not in the IPAI event catalog")
    write_date = stamp or (key_record or record).write_date or fields.Datetime.now()
    return {
        "event_type": event_type,
        "aggregate_type": spec.domain.aggregate_type,
        "aggregate_id": str(aggregate_id if aggregate_id is not None else record.id),
        "payload": build_payload(event_type, values),
        "key": idempotency_key(event_type, record.id, write_date),
        "record": record,
        "occurred_at": occurred_at,
    }


def send_ipai_events(env, events):
    """Queue several events in one write (e.g. one per line of an expense report)."""
    return env["ipai.event.outbox"].sudo()._enqueue_many(events)


def default_source(database_uuid):
    """The source a database sends under unless its administrator names one: its
    ``database.uuid``, so two databases never share one by default, whatever they are called,
    and renaming a database does not move its events' history at the bus."""
    return f"odoo-{database_uuid}"


def bus_key(key, database_uuid):
    """The key the bus knows an event by: the outbox's key (event, record, moment) scoped to
    the database, so no two databases' events share one, even under one source name."""
    return f"{key}@{database_uuid}"


class DeliveryError(Exception):
    """The receiver could not be reached or did not accept the event; ``message`` says why."""


def open_sender(url, secret, *, timeout=POST_TIMEOUT_SECONDS):
    """A SignedSender to the configured webhook; DeliveryError when it is not configured."""
    if not secret:
        raise DeliveryError("no webhook secret is configured")
    try:
        return SignedSender(url, secret, timeout=timeout)
    except ConfigurationError as error:
        raise DeliveryError(str(error)) from None


def accepted(answer_of, url):
    """The receiver's JSON answer when it took the request (HTTP 200, ok); else DeliveryError
    with a message fit for an administrator (never the secret)."""
    try:
        status, answer = answer_of()
    except ReceiverUnreachable as error:
        if error.timed_out:
            raise DeliveryError(f"the receiver at {url} is not answering ({error.reason})") from None
        raise DeliveryError(f"the receiver at {url} is unreachable ({error.reason})") from None
    if status != 200 or not answer.get("ok"):
        raise DeliveryError(f"the receiver answered HTTP {status}: {answer.get('error')}")
    return answer


def post_event(url, secret, envelope: Envelope, key, *, timeout=POST_TIMEOUT_SECONDS):
    """Sign and POST one envelope; returns the receiver's JSON answer on 200.

    Raises DeliveryError with a message fit for an administrator (never the secret).
    """
    with open_sender(url, secret, timeout=timeout) as sender:
        return accepted(lambda: sender.post_event(envelope, key), url)


WAITING_BEHIND = (
    "not posted: an earlier event of the same record was not delivered, and "
    "events of one record go in order"
)
BUS_AWAY = "not posted: the bus did not take the batch before it; this one goes out once it does"
# Events per signed request: one round trip and one commit at the bus for all of them.
BATCH_EVENTS = 250


class BusUnreachable(DeliveryError):
    """The bus did not take a whole batch (unreachable, timed out, or the request refused as
    such): nothing of it was stored. The dispatcher probes the bus rather than each event."""


class NotPosted(DeliveryError):
    """Kept back unposted (behind an earlier event of its record, or after the bus did not
    take a batch): no attempt is counted."""


class BatchPoster:
    """Posts many events in signed batches over one kept-alive connection, in the order given:
    the bus stores each batch at once, in order, and delivers each record's events so.

    An event the bus would refuse is checked here first, with the bus's own rules, and kept
    back with the reason; its record's later events wait behind it (WAITING_BEHIND). Once the
    bus does not take a batch (``unreachable``), nothing more is posted this run (BUS_AWAY).
    Pure HTTP, no ORM: the caller prepares the envelopes and writes the outcomes.
    """

    def __init__(self, url, secret, *, batch_events=BATCH_EVENTS, timeout=POST_TIMEOUT_SECONDS):
        self.url, self.secret, self.timeout = url, secret, timeout
        self.batch_events = batch_events
        self.unreachable = None  # the BusUnreachable of this run's first batch not taken
        self._sender = None  # opened at the first batch: a bad URL is that batch's failure
        self._held_back = set()  # records with an undelivered event in this run

    def post_all(self, items):
        """``items``: (id, record, envelope, key) tuples. Returns {id: answer or DeliveryError}.

        Call it again with the next items of the same run: a record held back stays held back.
        """
        outcomes, ready = {}, []
        for item in items:
            item_id, record, envelope, key = item
            element = {**envelope.to_json(), "idempotency_key": key}
            check = parse_batch_event(element)
            if record in self._held_back:
                outcomes[item_id] = NotPosted(WAITING_BEHIND)
            elif check.refusal:
                outcomes[item_id] = DeliveryError(f"the bus would refuse this event: {check.refusal}")
                self._held_back.add(record)
            else:
                # and a comma, and the trace context the sender adds to each element
                ready.append((item, len(exact_json.dumps(element).encode()) + 1 + TRACE_FIELD_BYTES))
        for batch in self._batches(ready):
            if self.unreachable:
                outcomes.update((item[0], NotPosted(BUS_AWAY)) for item in batch)
            else:
                outcomes.update(self._post_batch(batch))
        return outcomes

    def _batches(self, sized_items):
        """The items in order, cut into batches the bus takes: at most ``batch_events`` events
        and MAX_BATCH_BYTES bytes each (a batch refused for its size would be refused again at
        every probe, and hold the whole outbox back)."""
        batch, size = [], len(b'{"events":[]}')
        for item, item_size in sized_items:
            if batch and (len(batch) == self.batch_events or size + item_size > MAX_BATCH_BYTES):
                yield batch
                batch, size = [], len(b'{"events":[]}')
            batch.append(item)
            size += item_size
        if batch:
            yield batch

    def _post_batch(self, items):
        events = [(envelope, key) for _, _, envelope, key in items]
        try:
            self._sender = self._sender or open_sender(self.url, self.secret, timeout=self.timeout)
            answer = accepted(lambda: self._sender.post_batch(events), self.url)
        except DeliveryError as error:
            self.unreachable = BusUnreachable(str(error))
            self._held_back.update(item[1] for item in items)
            return {item[0]: self.unreachable for item in items}
        outcomes = {}
        for item, result in zip(items, answer["results"]):
            if result["status"] == "refused":
                outcomes[item[0]] = DeliveryError(f"the receiver refused this event: {result['error']}")
                self._held_back.add(item[1])
            else:
                outcomes[item[0]] = {
                    "event_id": result["event_id"],
                    "duplicate": result["status"] == "duplicate",
                }
        return outcomes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._sender is not None:
            self._sender.close()
