"""Sample events, one of each catalogued type, for `ipai-bus demo` and `ipai-bus send --sample`."""

from __future__ import annotations

from datetime import datetime, timezone

from .catalog import CATALOG
from .envelope import Envelope, new_envelope


def sample_envelope(event_type: str, *, occurred_at: datetime | None = None) -> Envelope:
    """A realistic envelope of ``event_type`` (a catalogued type), from the catalog's samples."""
    spec = CATALOG[event_type]
    payload = {**spec.domain.sample, **spec.sample_values}
    aggregate = payload[spec.domain.sample_aggregate_field]
    return new_envelope(
        event_type, str(aggregate), payload, occurred_at=occurred_at or datetime.now(timezone.utc)
    )


def all_samples() -> list[Envelope]:
    """One sample of each of the 14 catalogued types, in catalog order."""
    return [sample_envelope(event_type) for event_type in CATALOG]
