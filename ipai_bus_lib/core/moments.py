"""Date rules of the wire contract: how a moment is written (ISO 8601 text, UTC) and which
``occurred_at`` values are accepted (a real date and zone, inside what every reader represents).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from .contract import ISO_DATETIME_PATTERN, MAX_UTC_OFFSET_MINUTES, MIN_UTC_OFFSET_MINUTES

# Real zones span -12:00 to +14:00; the bound also keeps every accepted offset storable.
MAX_UTC_OFFSET = timedelta(minutes=MAX_UTC_OFFSET_MINUTES)
MIN_UTC_OFFSET = timedelta(minutes=MIN_UTC_OFFSET_MINUTES)
# occurred_at, once in UTC, must stay a day inside what Python represents, so that a reader in
# any time zone can turn it into a datetime.
EARLIEST_OCCURRED_AT = datetime(1, 1, 2, tzinfo=timezone.utc)
LATEST_OCCURRED_AT = datetime(9999, 12, 31, tzinfo=timezone.utc)
OCCURRED_AT_RULE = (
    "occurred_at must be an ISO 8601 date-time with a zone between -12:00 and +14:00,"
    " from year 0001 to 9999 in UTC, e.g. 2026-01-22T07:26:26Z"
)


def json_value(value: Any) -> Any:
    """``value`` as JSON holds it: a datetime as ISO 8601 UTC text (a naive one read as UTC),
    a date as ``YYYY-MM-DD``, anything else unchanged."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def is_iso_datetime(value: str) -> bool:
    """The same rule as the Edge Function's: the contract's pattern, a real calendar date, a
    real zone offset, and a moment that stays within years 1-9999 once converted to UTC."""
    match = ISO_DATETIME_PATTERN.fullmatch(value)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    offset = _zone_offset(match.group(8))
    if offset is None:
        return False
    try:
        utc = datetime(year, month, day, hour, minute, second) - offset
    except (ValueError, OverflowError):
        return False
    return EARLIEST_OCCURRED_AT.replace(tzinfo=None) <= utc <= LATEST_OCCURRED_AT.replace(tzinfo=None)


def _zone_offset(zone: str) -> timedelta | None:
    """The offset ``Z`` or ``±HH:MM`` names, or None when it is no real zone's."""
    if zone == "Z":
        return timedelta(0)
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    return offset if MIN_UTC_OFFSET <= offset <= MAX_UTC_OFFSET else None
