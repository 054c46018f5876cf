"""The catalog of the 14 business event types: data, read by everyone.

Odoo's payload builders, the receiver's validation and the router's formatters all read this one
module; nothing else lists the event types or their payload fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import EnvelopeError
from .moments import json_value


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
        return catalogued(f"{self.name}.{step}").name


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
class ChatAction:
    """A button a chat message of an event type may carry: what Odoo is asked to do (``name``),
    the button's label and Mattermost style, whether it first asks the person for a reason, and
    the event type the act causes in Odoo (which comes back on the bus like any other)."""

    name: str
    label: str
    causes: str
    style: str = "default"
    asks_reason: bool = False

    @property
    def button_id(self) -> str:
        """The id Mattermost keys the button by (letters and digits only)."""
        return "".join(ch for ch in self.name if ch.isalnum())


@dataclass(frozen=True)
class EventType:
    """One catalogued event type: its domain, the step it announces, how a message shows it,
    the payload values its sample carries beyond the domain's, and the actions its chat
    message offers."""

    name: str
    domain: Domain
    step: str
    emoji: str
    sample_values: Mapping[str, Any]
    actions: tuple[ChatAction, ...] = ()

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


# What a chat message may offer, by event type: the approver acts where the message is.
_ACTIONS: Mapping[str, tuple[ChatAction, ...]] = {
    "expense.submitted": (
        ChatAction("approve", "Approve", causes="expense.approved", style="primary"),
        ChatAction("refuse", "Refuse", causes="expense.rejected", style="danger", asks_reason=True),
    ),
    # A BIR filing's next step: the task moves to its project's stage of that step.
    "finance_task.in_progress": (
        ChatAction("submit_filing", "Submit for review", causes="finance_task.submitted"),
    ),
    "finance_task.submitted": (
        ChatAction("approve_filing", "Approve filing", causes="finance_task.approved", style="primary"),
    ),
    "finance_task.approved": (
        ChatAction("mark_filed", "Mark filed", causes="finance_task.filed", style="primary"),
    ),
    "finance_task.overdue": (
        ChatAction("mark_filed", "Mark filed", causes="finance_task.filed", style="primary"),
    ),
}


def _with_actions(types: dict[str, EventType]) -> dict[str, EventType]:
    return {
        name: dataclasses.replace(spec, actions=_ACTIONS.get(name, ())) for name, spec in types.items()
    }


# The one list of event types, and everything a reader needs of each.
CATALOG: Mapping[str, EventType] = MappingProxyType(
    _with_actions(
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
)


def lookup(event_type: str) -> EventType | None:
    """The catalog entry of ``event_type``, or None for a type outside the catalog."""
    return CATALOG.get(event_type)


def chat_action(event_type: str, name: str) -> ChatAction | None:
    """The action ``name`` that messages of ``event_type`` offer, or None."""
    spec = CATALOG.get(event_type)
    return next((a for a in spec.actions if a.name == name), None) if spec else None


def catalogued(event_type: str) -> EventType:
    """The catalog entry of ``event_type``; EnvelopeError for a type outside the catalog."""
    spec = CATALOG.get(event_type)
    if spec is None:
        raise EnvelopeError(f"{event_type!r} is not in the event catalog", field="event_type")
    return spec


def build_payload(event_type: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog payload for ``event_type``: exactly its fields, in order, missing ones as None.

    Dates and datetimes become ISO 8601 text. Raises EnvelopeError for an uncatalogued type or a
    value that names a field the catalog does not have.
    """
    spec = catalogued(event_type)
    unknown = sorted(set(values) - set(spec.payload_fields))
    if unknown:
        raise EnvelopeError(
            f"{event_type} payload has no field(s) {', '.join(unknown)}", field="payload"
        )
    return {name: json_value(values.get(name)) for name in spec.payload_fields}


# Names this module held before the catalog was split by concern (release 0.1), where they
# are now. Addons of earlier releases import them from here; an upgrade installs the library
# before the addons it serves, so they resolve, with a DeprecationWarning, until the next release.
_MOVED = {
    **dict.fromkeys(
        (
            "BATCH_PATH_SUFFIX",
            "DEFAULT_SOURCE",
            "EVENT_TYPE_PATTERN",
            "IDEMPOTENCY_KEY_PATTERN",
            "ISO_DATETIME_PATTERN",
            "MAX_BATCH_BYTES",
            "MAX_BATCH_EVENTS",
            "MAX_EVENT_BYTES",
            "MAX_NUMERIC_AGGREGATE_ID",
            "MAX_PAYLOAD_DEPTH",
            "MAX_TEXT_FIELD_LENGTH",
            "SOURCE_PATTERN",
        ),
        "contract",
    ),
    **dict.fromkeys(
        (
            "BODY_TOO_DEEP",
            "MAX_BODY_DEPTH",
            "TOO_DEEP",
            "Envelope",
            "check_idempotency_key",
            "new_envelope",
            "parse_envelope",
        ),
        "envelope",
    ),
    **dict.fromkeys(
        ("BatchEvent", "batch_body", "batch_url", "parse_batch", "parse_batch_event"), "batch"
    ),
    **dict.fromkeys(("is_storable", "storable_text"), "storability"),
    **dict.fromkeys(("EARLIEST_OCCURRED_AT", "LATEST_OCCURRED_AT", "MAX_UTC_OFFSET"), "moments"),
    "idempotency_key": "odoo_key",
}


def __getattr__(name: str) -> Any:
    """A name that moved out of this module (see _MOVED), from its new home."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = f"{__package__}.{_MOVED[name]}"
    warnings.warn(
        f"{__name__}.{name} moved to {home}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)
