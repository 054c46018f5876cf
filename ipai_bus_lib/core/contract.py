"""The wire contract's numbers and patterns, read from ``wire_contract.json``: the one file the
library, the Odoo addon (through this module) and the Edge Function all read.

Change a limit there, in one edit; tests/test_wire_contract.py then says which SQL domain or
function default of the migrations no longer agrees with it.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

CONTRACT_FILE = "wire_contract.json"


def load() -> dict[str, Any]:
    """The contract as a JSON document (a fresh copy)."""
    text = resources.files(__package__).joinpath(CONTRACT_FILE).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


_CONTRACT = load()
_HEADERS = _CONTRACT["headers"]
_SIGNATURE = _CONTRACT["signature"]
_ENVELOPE = _CONTRACT["envelope"]
_SIZES = _CONTRACT["sizes"]
_DELIVERY = _CONTRACT["delivery"]

TIMESTAMP_HEADER: str = _HEADERS["timestamp"]
SIGNATURE_HEADER: str = _HEADERS["signature"]
IDEMPOTENCY_KEY_HEADER: str = _HEADERS["idempotency_key"]

MIN_SECRET_LENGTH: int = _SIGNATURE["min_secret_length"]
TOLERANCE_SECONDS: int = _SIGNATURE["tolerance_seconds"]
TIMESTAMP_PATTERN = re.compile(_SIGNATURE["timestamp_pattern"])
# More digests than any rotation needs only costs the receiver HMACs: refuse them.
MAX_DIGESTS_PER_HEADER: int = _SIGNATURE["max_digests_per_header"]

EVENT_TYPE_PATTERN = re.compile(_ENVELOPE["event_type_pattern"])
SOURCE_PATTERN = re.compile(_ENVELOPE["source_pattern"])
DEFAULT_SOURCE: str = _ENVELOPE["default_source"]
IDEMPOTENCY_KEY_PATTERN = re.compile(_ENVELOPE["idempotency_key_pattern"])
ISO_DATETIME_PATTERN = re.compile(_ENVELOPE["occurred_at_pattern"])
MAX_UTC_OFFSET_MINUTES: int = _ENVELOPE["max_utc_offset_minutes"]
MIN_UTC_OFFSET_MINUTES: int = _ENVELOPE["min_utc_offset_minutes"]
MAX_TEXT_FIELD_LENGTH: int = _ENVELOPE["max_text_length"]
# The largest integer JSON parsers agree on (JavaScript's safe integers).
MAX_NUMERIC_AGGREGATE_ID: int = _ENVELOPE["max_numeric_aggregate_id"]
MAX_PAYLOAD_DEPTH: int = _ENVELOPE["max_payload_depth"]

# One event: a single-event body, or one event of a batch as compact UTF-8 JSON (413 beyond).
MAX_EVENT_BYTES: int = _SIZES["max_event_bytes"]
# One batch request: at most this many events and bytes (413 beyond either).
MAX_BATCH_EVENTS: int = _SIZES["max_batch_events"]
MAX_BATCH_BYTES: int = _SIZES["max_batch_bytes"]
BATCH_PATH_SUFFIX: str = _CONTRACT["paths"]["batch_suffix"]

DEFAULT_RETRY_DELAYS_SECONDS: tuple[int, ...] = tuple(_DELIVERY["retry_delays_seconds"])
DEFAULT_MAX_ATTEMPTS: int = _DELIVERY["max_attempts"]
DEFAULT_LEASE_SECONDS: int = _DELIVERY["lease_seconds"]

_TRACE = _CONTRACT["trace_context"]
# W3C Trace Context (optional; ignored when not valid, never a refusal).
TRACEPARENT_HEADER: str = _TRACE["traceparent"]
TRACESTATE_HEADER: str = _TRACE["tracestate"]
STORED_TRACEPARENT_PATTERN = re.compile(_TRACE["stored_traceparent_pattern"])
TRACESTATE_PATTERN = re.compile(_TRACE["tracestate_pattern"])
MAX_TRACESTATE_CHARS: int = _TRACE["max_tracestate_length"]
