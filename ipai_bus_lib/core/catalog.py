"""The event envelope and the catalog of the 14 business event types: data, read by everyone.

Odoo's payload builders, the receiver's validation and the router's formatters all read this one
module; nothing else lists the event types or their payload fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from . import exact_json
from .errors import BatchTooLarge, EnvelopeError

EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ISO_DATETIME_PATTERN = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
)
MAX_TEXT_FIELD_LENGTH = 255
# The largest integer JSON parsers agree on (JavaScript's safe integers): the Edge Function too.
MAX_NUMERIC_AGGREGATE_ID = 2**53 - 1
# Real zones span -12:00 to +14:00; the bound also keeps every accepted offset storable.
MAX_UTC_OFFSET = timedelta(hours=14)
# occurred_at, once in UTC, must stay a day inside what Python represents, so that a reader in
# any time zone can turn it into a datetime.
EARLIEST_OCCURRED_AT = datetime(1, 1, 2, tzinfo=timezone.utc)
LATEST_OCCURRED_AT = datetime(9999, 12, 31, tzinfo=timezone.utc)
MAX_PAYLOAD_DEPTH = 32
TOO_DEEP = "payload nested too deeply"
# A whole body may nest this deep: a batch's payloads sit three levels down ({"events": [{...}]}).
MAX_BODY_DEPTH = MAX_PAYLOAD_DEPTH + 3
BODY_TOO_DEEP = (
    f"body nests deeper than {MAX_BODY_DEPTH} levels (a payload may nest at most {MAX_PAYLOAD_DEPTH})"
)
# One event: a single-event body, or one event of a batch as compact UTF-8 JSON (413 beyond).
MAX_EVENT_BYTES = 256 * 1024
DEFAULT_SOURCE = "odoo"
# One batch request: at most this many events and bytes (413 beyond either).
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Domain:
    """A family of events about one kind of Odoo record, and what every reader needs of it."""

    name: str
    aggregate_type: str
    payload_fields: tuple[str, ...]
    title: str  # how a message names the record ("Expense submitted")
    link_model: str  # the Odoo model a message links to
    link_field: str  # the payload field holding that record's id
    sample: Mapping[str, Any]  # a realistic payload, for demos and samples
    sample_aggregate_field: str  # the sample payload field whose value is the aggregate id

    def event_type(self, step: str) -> str:
        """The catalogued type of ``step`` in this domain; EnvelopeError if there is none."""
        name = f"{self.name}.{step}"
        if name not in CATALOG:
            raise EnvelopeError(f"{name!r} is not in the event catalog", field="event_type")
        return name


EXPENSE = Domain(
    name="expense",
    aggregate_type="hr.expense",
    payload_fields=(
        "expense_id",
        "employee_id",
        "employee_name",
        "employee_code",
        "amount",
        "currency",
        "description",
        "date",
        "category",
        "state",
    ),
    title="Expense",
    link_model="hr.expense",
    link_field="expense_id",
    sample=MappingProxyType(
        {
            "expense_id": 4201,
            "employee_id": 17,
            "employee_name": "Maria Santos",
            "employee_code": "EMP-0017",
            "amount": 1250.5,
            "currency": "PHP",
            "description": "Grab to BIR RDO 050, Makati",
            "date": "2026-01-22",
            "category": "Travel",
        }
    ),
    sample_aggregate_field="expense_id",
)
ASSET = Domain(
    name="asset",
    aggregate_type="maintenance.equipment",
    payload_fields=(
        "booking_id",
        "asset_id",
        "asset_name",
        "asset_category",
        "reserved_by",
        "reserved_by_name",
        "reserved_from",
        "reserved_to",
        "booking_state",
    ),
    title="Equipment",
    link_model="ipai.equipment.booking",
    link_field="booking_id",
    sample=MappingProxyType(
        {
            "booking_id": 88,
            "asset_id": 12,
            "asset_name": "Epson EB-X51 projector",
            "asset_category": "AV equipment",
            "reserved_by": 17,
            "reserved_by_name": "Maria Santos",
            "reserved_from": "2026-01-26T01:00:00Z",
            "reserved_to": "2026-01-26T09:00:00Z",
        }
    ),
    sample_aggregate_field="asset_id",
)
FINANCE_TASK = Domain(
    name="finance_task",
    aggregate_type="project.task",
    payload_fields=(
        "task_id",
        "task_name",
        "task_code",
        "bir_form",
        "period_covered",
        "employee_code",
        "prep_deadline",
        "filing_deadline",
        "status",
        "stage_name",
        "assigned_to",
        "logframe_id",
        "logframe_level",
        "days_overdue",
    ),
    title="Finance task",
    link_model="project.task",
    link_field="task_id",
    sample=MappingProxyType(
        {
            "task_id": 305,
            "task_name": "Monthly remittance of withholding tax on compensation",
            "task_code": "BIR-1601C-2026-01",
            "bir_form": "1601-C",
            "period_covered": "2026-01",
            "employee_code": "EMP-0023",
            "prep_deadline": "2026-02-05",
            "filing_deadline": "2026-02-10",
            "assigned_to": "Ana Reyes",
            "logframe_id": 4,
            "logframe_level": "output",
            "days_overdue": 0,
        }
    ),
    sample_aggregate_field="task_id",
)
DOMAINS: tuple[Domain, ...] = (EXPENSE, ASSET, FINANCE_TASK)


@dataclass(frozen=True)
class EventType:
    """One catalogued event type: its domain, the step it announces, how a message shows it,
    and the payload values its sample carries beyond the domain's."""

    name: str
    domain: Domain
    step: str
    emoji: str
    sample_values: Mapping[str, Any]

    @property
    def payload_fields(self) -> tuple[str, ...]:
        return self.domain.payload_fields

    @property
    def title(self) -> str:
        """``Expense submitted``, ``Finance task in progress``."""
        return f"{self.domain.title} {self.step.replace('_', ' ')}".capitalize()


def _types(domain: Domain, steps: tuple[tuple[str, str, dict[str, Any]], ...]) -> dict[str, EventType]:
    return {
        f"{domain.name}.{step}": EventType(
            f"{domain.name}.{step}", domain, step, emoji, MappingProxyType(sample)
        )
        for step, emoji, sample in steps
    }


def _task(status: str, stage: str, days_overdue: int = 0) -> dict[str, Any]:
    return {"status": status, "stage_name": stage, "days_overdue": days_overdue}


# The one list of event types, and everything a reader needs of each.
CATALOG: Mapping[str, EventType] = MappingProxyType(
    {
        **_types(
            EXPENSE,
            (
                ("submitted", "📝", {"state": "submitted"}),
                ("approved", "✅", {"state": "approved"}),
                ("rejected", "❌", {"state": "refused"}),
                ("paid", "💰", {"state": "done"}),
            ),
        ),
        **_types(
            ASSET,
            (
                ("reserved", "📅", {"booking_state": "reserved"}),
                ("checked_out", "📤", {"booking_state": "checked_out"}),
                ("checked_in", "📥", {"booking_state": "checked_in"}),
                ("overdue", "⚠️", {"booking_state": "checked_out"}),
            ),
        ),
        **_types(
            FINANCE_TASK,
            (
                ("created", "🆕", _task("draft", "To prepare")),
                ("in_progress", "🔄", _task("in_progress", "Preparing")),
                ("submitted", "📝", _task("submitted", "For review")),
                ("approved", "✅", _task("approved", "Approved")),
                ("filed", "📨", _task("filed", "Filed")),
                ("overdue", "🚨", _task("in_progress", "Preparing", days_overdue=3)),
            ),
        ),
    }
)


def lookup(event_type: str) -> EventType | None:
    """The catalog entry of ``event_type``, or None for a type outside the catalog."""
    return CATALOG.get(event_type)


def build_payload(event_type: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog payload for ``event_type``: exactly its fields, in order, missing ones as None.

    Dates and datetimes become ISO 8601 text. Raises EnvelopeError for an uncatalogued type or a
    value that names a field the catalog does not have.
    """
    spec = lookup(event_type)
    if spec is None:
        raise EnvelopeError(f"{event_type!r} is not in the event catalog", field="event_type")
    unknown = sorted(set(values) - set(spec.payload_fields))
    if unknown:
        raise EnvelopeError(
            f"{event_type} payload has no field(s) {', '.join(unknown)}", field="payload"
        )
    return {name: _json_value(values.get(name)) for name in spec.payload_fields}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Envelope:
    """One event as it travels on the wire (the JSON body of the webhook)."""

    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: str | None = None
    source: str = DEFAULT_SOURCE

    def to_json(self) -> dict[str, Any]:
        """The envelope as the JSON object the wire contract describes."""
        body: dict[str, Any] = {
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "payload": dict(self.payload),
            "source": self.source,
        }
        if self.occurred_at is not None:
            body["occurred_at"] = self.occurred_at
        return body

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON: the exact bytes a sender signs and posts."""
        return exact_json.dumps(self.to_json()).encode()


def new_envelope(
    event_type: str,
    aggregate_id: str | int,
    payload: Mapping[str, Any],
    *,
    occurred_at: datetime | None = None,
    source: str = DEFAULT_SOURCE,
) -> Envelope:
    """A catalogued event's envelope, its aggregate type and payload fields taken from the catalog."""
    spec = lookup(event_type)
    if spec is None:
        raise EnvelopeError(f"{event_type!r} is not in the event catalog", field="event_type")
    moment = occurred_at or datetime.now(timezone.utc)
    return Envelope(
        event_type=event_type,
        aggregate_type=spec.domain.aggregate_type,
        aggregate_id=str(aggregate_id),
        payload=build_payload(event_type, payload),
        occurred_at=_json_value(moment.replace(microsecond=0)),
        source=source,
    )


def parse_envelope(document: Any) -> Envelope:
    """Validate a decoded JSON body against the wire contract and return its Envelope.

    Raises EnvelopeError naming the first field that is missing or of the wrong shape.
    """
    if not isinstance(document, dict):
        raise EnvelopeError("body must be a JSON object")
    event_type = _required_text(document, "event_type")
    if not EVENT_TYPE_PATTERN.fullmatch(event_type):
        raise EnvelopeError(
            "event_type must be lowercase dotted words, e.g. expense.submitted", field="event_type"
        )
    aggregate_type = _required_text(document, "aggregate_type")
    aggregate_id = _aggregate_id(document)
    payload = document.get("payload")
    if "payload" not in document:
        raise EnvelopeError("missing field: payload", field="payload")
    if not isinstance(payload, dict):
        raise EnvelopeError("payload must be a JSON object", field="payload")
    if not is_storable(payload):
        raise EnvelopeError(
            f"payload must nest at most {MAX_PAYLOAD_DEPTH} levels and hold no NUL character"
            " or lone surrogate",
            field="payload",
        )
    exact_json.check_numbers(payload)
    source = document.get("source", DEFAULT_SOURCE)
    if not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source):
        raise EnvelopeError("source must be 1-64 characters of [A-Za-z0-9_.-]", field="source")
    return Envelope(
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        payload=payload,
        occurred_at=_occurred_at(document),
        source=source,
    )


def _required_text(document: Mapping[str, Any], name: str) -> str:
    if name not in document or document[name] is None:
        raise EnvelopeError(f"missing field: {name}", field=name)
    value = document[name]
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_TEXT_FIELD_LENGTH
        or _UNSTORABLE_TEXT.search(value)
    ):
        raise EnvelopeError(
            f"{name} must be text of 1-{MAX_TEXT_FIELD_LENGTH} characters, no control characters",
            field=name,
        )
    return value


_UNSTORABLE_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# What no PostgreSQL text or jsonb value can hold: NUL, and lone surrogates (not UTF-8).
_UNSTORABLE_IN_JSON = re.compile(r"[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` without the characters PostgreSQL cannot store (see is_storable), for text the
    bus writes but did not choose, such as a peer's answer quoted in an error."""
    return _UNSTORABLE_IN_JSON.sub("", text)


def is_storable(value: Any, depth: int = 0) -> bool:
    """True when a decoded JSON value can be stored as jsonb: no NUL, no lone surrogate, and
    nested at most MAX_PAYLOAD_DEPTH deep."""
    if isinstance(value, str):
        return not _UNSTORABLE_IN_JSON.search(value)
    if depth >= MAX_PAYLOAD_DEPTH and isinstance(value, (dict, list)):
        return False
    if isinstance(value, dict):
        return all(is_storable(key) and is_storable(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return all(is_storable(item, depth + 1) for item in value)
    return True


def _aggregate_id(document: Mapping[str, Any]) -> str:
    value = document.get("aggregate_id")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_NUMERIC_AGGREGATE_ID:
            raise EnvelopeError(
                "aggregate_id sent as a number must be a whole number from 0 to "
                f"{MAX_NUMERIC_AGGREGATE_ID} (send larger ids as text)",
                field="aggregate_id",
            )
        return str(value)
    return _required_text(document, "aggregate_id")


def _occurred_at(document: Mapping[str, Any]) -> str | None:
    value = document.get("occurred_at")
    if value is None:
        return None
    if not isinstance(value, str) or not _is_iso_datetime(value):
        raise EnvelopeError(
            "occurred_at must be an ISO 8601 date-time with a zone between -12:00 and +14:00,"
            " from year 0001 to 9999 in UTC, e.g. 2026-01-22T07:26:26Z",
            field="occurred_at",
        )
    return value


def _is_iso_datetime(value: str) -> bool:
    """The same rule as the Edge Function's: the regular expression, a real calendar date, a
    real zone offset, and a moment that stays within years 1-9999 once converted to UTC."""
    match = ISO_DATETIME_PATTERN.fullmatch(value)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    zone = match.group(8)
    offset = timedelta(0)
    if zone != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if minutes > 59:
            return False
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
        if offset > MAX_UTC_OFFSET or offset < -timedelta(hours=12):
            return False
    try:
        local = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    try:
        utc = local - offset
    except OverflowError:
        return False
    return EARLIEST_OCCURRED_AT.replace(tzinfo=None) <= utc <= LATEST_OCCURRED_AT.replace(tzinfo=None)


def check_idempotency_key(key: str | None) -> str:
    """Return ``key`` if it is 1-255 printable ASCII characters, else raise EnvelopeError."""
    if not key or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise EnvelopeError(
            "x-idempotency-key header must be 1-255 printable ASCII characters",
            field="x-idempotency-key",
        )
    return key


@dataclass(frozen=True)
class BatchEvent:
    """One element of a batch body: its envelope and idempotency key, or why it was refused."""

    envelope: Envelope | None = None
    idempotency_key: str | None = None
    refusal: str | None = None


def parse_batch(document: Any, *, max_events: int = MAX_BATCH_EVENTS) -> list[BatchEvent]:
    """The elements of a batch body ``{"events": [envelope + "idempotency_key", ...]}``, in order.

    Each element is checked as the single-event path checks its body, with the same reasons; a
    bad element is refused alone. Raises EnvelopeError when the body is not a batch, and
    BatchTooLarge beyond ``max_events``.
    """
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list) or not events:
        raise EnvelopeError(
            'body must be a JSON object {"events": [...]} with at least one event', field="events"
        )
    if len(events) > max_events:
        raise BatchTooLarge(f"batch of {len(events)} events: at most {max_events} per request")
    return [parse_batch_event(item) for item in events]


def parse_batch_event(item: Any) -> BatchEvent:
    """One batch element checked as the receiver checks it (see parse_batch)."""
    if not isinstance(item, dict):
        return BatchEvent(refusal="event must be a JSON object")
    try:
        if len(exact_json.dumps(item).encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
            raise EnvelopeError(f"event larger than {MAX_EVENT_BYTES} bytes as compact JSON")
        envelope = parse_envelope(item)
        key = item.get("idempotency_key")
        if not isinstance(key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            raise EnvelopeError(
                "idempotency_key must be 1-255 printable ASCII characters", field="idempotency_key"
            )
    except EnvelopeError as exc:
        return BatchEvent(refusal=str(exc))
    except RecursionError:
        return BatchEvent(refusal=TOO_DEEP)
    return BatchEvent(envelope=envelope, idempotency_key=key)


BATCH_PATH_SUFFIX = "/batch"


def batch_url(webhook_url: str) -> str:
    """The batch sibling of a webhook URL: ``…/odoo-webhook`` → ``…/odoo-webhook/batch``."""
    url = webhook_url.rstrip("/")
    return url if url.endswith(BATCH_PATH_SUFFIX) else url + BATCH_PATH_SUFFIX


def batch_body(events: Sequence[tuple[Envelope, str]]) -> bytes:
    """Compact UTF-8 JSON of a batch of (envelope, idempotency key): the bytes a sender signs."""
    document = {"events": [{**envelope.to_json(), "idempotency_key": key} for envelope, key in events]}
    return exact_json.dumps(document).encode()


def idempotency_key(event_type: str, record_id: int | str, write_date: datetime) -> str:
    """Odoo's idempotency key: ``{event_type}:{record_id}:{write_date.timestamp()}``.

    Odoo keeps naive UTC datetimes, so a naive ``write_date`` is read as UTC.
    """
    if write_date.tzinfo is None:
        write_date = write_date.replace(tzinfo=timezone.utc)
    return f"{event_type}:{record_id}:{write_date.timestamp()}"
