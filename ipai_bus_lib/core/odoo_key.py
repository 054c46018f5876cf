"""Odoo's idempotency key: one per business transition, so a transition sent twice is one event."""

from __future__ import annotations

from datetime import datetime, timezone


def idempotency_key(event_type: str, record_id: int | str, write_date: datetime) -> str:
    """Odoo's idempotency key: ``{event_type}:{record_id}:{write_date.timestamp()}``.

    Odoo keeps naive UTC datetimes, so a naive ``write_date`` is read as UTC.
    """
    if write_date.tzinfo is None:
        write_date = write_date.replace(tzinfo=timezone.utc)
    return f"{event_type}:{record_id}:{write_date.timestamp()}"
