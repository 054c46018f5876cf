"""Sample events, one of each catalogued type, for `ipai-bus demo` and `ipai-bus send --sample`."""

from __future__ import annotations

from datetime import datetime, timezone

from .catalog import CATALOG, Envelope, new_envelope

_EXPENSE = {
    "expense_id": 4201, "employee_id": 17, "employee_name": "Maria Santos",
    "employee_code": "EMP-0017", "amount": 1250.5, "currency": "PHP",
    "description": "Grab to BIR RDO 050, Makati", "date": "2026-01-22", "category": "Travel",
}
_ASSET = {
    "booking_id": 88, "asset_id": 12, "asset_name": "Epson EB-X51 projector",
    "asset_category": "AV equipment", "reserved_by": 17, "reserved_by_name": "Maria Santos",
    "reserved_from": "2026-01-26T01:00:00Z", "reserved_to": "2026-01-26T09:00:00Z",
}
_FINANCE_TASK = {
    "task_id": 305, "task_name": "Monthly remittance of withholding tax on compensation",
    "task_code": "BIR-1601C-2026-01", "bir_form": "1601-C", "period_covered": "2026-01",
    "employee_code": "EMP-0023", "prep_deadline": "2026-02-05", "filing_deadline": "2026-02-10",
    "assigned_to": "Ana Reyes", "logframe_id": 4, "logframe_level": "output", "days_overdue": 0,
}
_STATE = {
    "expense.submitted": "submitted", "expense.approved": "approved",
    "expense.rejected": "refused", "expense.paid": "done",
    "asset.reserved": "reserved", "asset.checked_out": "checked_out",
    "asset.checked_in": "checked_in", "asset.overdue": "checked_out",
    "finance_task.created": "draft", "finance_task.in_progress": "in_progress",
    "finance_task.submitted": "submitted", "finance_task.approved": "approved",
    "finance_task.filed": "filed", "finance_task.overdue": "in_progress",
}

# status is the step code; the stage is what the project calls it.
_STAGE_NAME = {"draft": "To prepare", "in_progress": "Preparing", "submitted": "For review",
               "approved": "Approved", "filed": "Filed"}


def sample_envelope(event_type: str, *, occurred_at: datetime | None = None) -> Envelope:
    """A realistic envelope of ``event_type`` (a catalogued type)."""
    domain = CATALOG[event_type].domain.name
    if domain == "expense":
        payload = {**_EXPENSE, "state": _STATE[event_type]}
        aggregate: object = _EXPENSE["expense_id"]
    elif domain == "asset":
        payload = {**_ASSET, "booking_state": _STATE[event_type]}
        aggregate = _ASSET["asset_id"]
    else:
        payload = {**_FINANCE_TASK, "status": _STATE[event_type],
                   "stage_name": _STAGE_NAME[_STATE[event_type]],
                   "days_overdue": 3 if event_type.endswith(".overdue") else 0}
        aggregate = _FINANCE_TASK["task_id"]
    return new_envelope(event_type, str(aggregate), payload,
                        occurred_at=occurred_at or datetime.now(timezone.utc))


def all_samples() -> list[Envelope]:
    """One sample of each of the 14 catalogued types, in catalog order."""
    return [sample_envelope(event_type) for event_type in CATALOG]
