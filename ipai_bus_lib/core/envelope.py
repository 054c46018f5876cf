"""The event envelope: one event as it travels on the wire, built by senders and checked by the
receiver with the contract's rules (wire_contract.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import exact_json
from .catalog import build_payload, catalogued
from .contract import (
    DEFAULT_SOURCE,
    EVENT_TYPE_PATTERN,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_NUMERIC_AGGREGATE_ID,
    MAX_PAYLOAD_DEPTH,
    MAX_TEXT_FIELD_LENGTH,
    SOURCE_PATTERN,
)
from .errors import EnvelopeError
from .moments import OCCURRED_AT_RULE, is_iso_datetime, json_value
from .storability import UNSTORABLE_TEXT, is_storable

TOO_DEEP = "payload nested too deeply"
# A whole body may nest this deep: a batch's payloads sit three levels down ({"events": [{...}]}).
MAX_BODY_DEPTH = MAX_PAYLOAD_DEPTH + 3
BODY_TOO_DEEP = (
    f"body nests deeper than {MAX_BODY_DEPTH} levels (a payload may nest at most {MAX_PAYLOAD_DEPTH})"
)
KEY_RULE = "must be 1-255 printable ASCII characters"


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
    spec = catalogued(event_type)
    moment = occurred_at or datetime.now(timezone.utc)
    return Envelope(
        event_type=event_type,
        aggregate_type=spec.domain.aggregate_type,
        aggregate_id=str(aggregate_id),
        payload=build_payload(event_type, payload),
        occurred_at=json_value(moment.replace(microsecond=0)),
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
        or UNSTORABLE_TEXT.search(value)
    ):
        raise EnvelopeError(
            f"{name} must be text of 1-{MAX_TEXT_FIELD_LENGTH} characters, no control characters",
            field=name,
        )
    return value


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
    if not isinstance(value, str) or not is_iso_datetime(value):
        raise EnvelopeError(OCCURRED_AT_RULE, field="occurred_at")
    return value


def is_idempotency_key(key: Any) -> bool:
    """True when ``key`` is an idempotency key the contract accepts (1-255 printable ASCII)."""
    return isinstance(key, str) and IDEMPOTENCY_KEY_PATTERN.fullmatch(key) is not None


def check_idempotency_key(key: str | None) -> str:
    """Return the header's ``key`` if the contract accepts it, else raise EnvelopeError."""
    if not is_idempotency_key(key):
        raise EnvelopeError(f"{IDEMPOTENCY_KEY_HEADER} header {KEY_RULE}", field=IDEMPOTENCY_KEY_HEADER)
    return key  # type: ignore[return-value]
