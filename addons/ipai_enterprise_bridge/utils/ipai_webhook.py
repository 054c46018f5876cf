"""Odoo's side of the wire contract: build, sign and post events with the bus library.

No second implementation of the signing rule or the event catalog lives here: both come from
ipai_bus_lib. ``send_ipai_event`` (the seed's entry point) only queues the event in Odoo's own
outbox, in the caller's transaction; the dispatch cron posts it after commit.
"""

import logging
import re
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests
from odoo import fields

from ipai_bus_lib.core.catalog import Envelope, build_payload, idempotency_key, lookup
from ipai_bus_lib.core.signing import signature_headers

_logger = logging.getLogger(__name__)

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


def default_source(database_name):
    """A database's name as a bus source: 1-64 characters of [A-Za-z0-9_.-]."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", database_name)[:64] or "odoo"


class DeliveryError(Exception):
    """The receiver could not be reached or did not accept the event; ``message`` says why."""


def post_event(url, secret, envelope: Envelope, key, *, timeout=POST_TIMEOUT_SECONDS, session=None):
    """Sign and POST one envelope (over ``session`` when given, to keep its connection alive).
    Returns the receiver's JSON answer on 200.

    Raises DeliveryError with a message fit for an administrator (never the secret).
    """
    if not url or not url.startswith(("http://", "https://")):
        raise DeliveryError("the webhook URL must start with http:// or https://")
    if not secret:
        raise DeliveryError("no webhook secret is configured")
    body = envelope.to_bytes()
    try:
        response = (session or requests).post(
            url, data=body, timeout=timeout, headers=signature_headers(secret, body, idempotency_key=key)
        )
    except requests.exceptions.InvalidURL:
        raise DeliveryError("the webhook URL is malformed") from None
    except requests.exceptions.Timeout:
        raise DeliveryError(f"the receiver did not answer within {timeout} s") from None
    except requests.exceptions.RequestException as exc:
        raise DeliveryError(f"the receiver at {url} is unreachable ({type(exc).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not answer.get("ok"):
        error = answer.get("error") or response.text[:200]
        raise DeliveryError(f"the receiver answered HTTP {response.status_code}: {error}")
    return answer


WAITING_BEHIND = (
    "not posted: an earlier event of the same record was not delivered, and "
    "events of one record go in order"
)
POST_THREADS = 4


class RecordOrderedPoster:
    """Posts many events at once over kept-alive connections (one per thread), and each
    record's events one after the other, in the order given: the bus accepts them in that order
    and delivers them so. After a failure, the record's later events wait (DeliveryError).

    Pure HTTP, no ORM: the caller prepares the envelopes and writes the outcomes.
    """

    def __init__(self, url, secret, *, threads=POST_THREADS, timeout=POST_TIMEOUT_SECONDS):
        self.url, self.secret, self.timeout = url, secret, timeout
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="ipai-post")
        self._local = threading.local()
        self._sessions = []
        self._lock = threading.Lock()

    def post_all(self, items):
        """``items``: (id, record, envelope, key) tuples. Returns {id: answer or DeliveryError}."""
        by_record = defaultdict(list)
        for item in items:
            by_record[item[1]].append(item)
        outcomes = {}
        for result in self._executor.map(self._post_in_order, by_record.values()):
            outcomes.update(result)
        return outcomes

    def _post_in_order(self, items):
        outcomes, blocked = {}, False
        for item_id, _record, envelope, key in items:
            if blocked:
                outcomes[item_id] = DeliveryError(WAITING_BEHIND)
                continue
            try:
                outcomes[item_id] = post_event(
                    self.url, self.secret, envelope, key, timeout=self.timeout, session=self._session()
                )
            except DeliveryError as error:
                outcomes[item_id], blocked = error, True
        return outcomes

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._executor.shutdown(wait=True)
        for session in self._sessions:
            session.close()
