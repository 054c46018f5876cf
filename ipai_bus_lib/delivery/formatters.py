"""Formatters: turn an event into a message a person reads (Mattermost, e-mail, console).

One formatter per domain of the catalog plus a generic one. Every field is optional: a missing or
odd value reads as "—" or as it was sent, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..core.catalog import lookup
from .safe_text import escape_html, escape_markdown, neutralise

MISSING = "—"
# A value is shown up to this many characters: a message stays a message whatever was sent.
MAX_VALUE_CHARS = 300
# Amounts are formatted as numbers only below this; beyond it they are shown as sent (bounded),
# so a tiny payload such as "1e100000000" cannot make the formatter write a huge number.
MAX_AMOUNT_DIGITS = 15
GENERIC_EMOJI = "🔔"


Field = tuple[str, str]
"""A label and its value on a message line; a line of one field with an empty label is a bare value."""


@dataclass(frozen=True)
class Message:
    """A formatted event: a title, lines of labelled values, and the bus's own link into Odoo.

    Titles, labels and values are plain text (payload text already neutralised by :func:`text`);
    each rendering escapes them for its format, and the link is the only link it adds.
    """

    emoji: str
    title: str
    lines: tuple[tuple[Field, ...], ...]
    link: str | None = None

    @property
    def markdown(self) -> str:
        """The message as Markdown (what Mattermost and the console show)."""
        parts = [f"{self.emoji} **{escape_markdown(self.title)}**"]
        parts += [self._line(line, "**{}:** {}", escape_markdown) for line in self.lines]
        if self.link:
            parts.append(f"[Open in Odoo]({self.link})")
        return "\n".join(parts)

    @property
    def plain_text(self) -> str:
        """The message as plain text (the text part of an e-mail)."""
        parts = [f"{self.emoji} {self.title}"]
        parts += [self._line(line, "{}: {}", str) for line in self.lines]
        if self.link:
            parts.append(f"Open in Odoo: {self.link}")
        return "\n".join(parts)

    @property
    def html(self) -> str:
        """The message as HTML (the HTML part of an e-mail)."""
        parts = [f"{self.emoji} <strong>{escape_html(self.title)}</strong>"]
        parts += [self._line(line, "<strong>{}:</strong> {}", escape_html) for line in self.lines]
        if self.link:
            parts.append(f'<a href="{escape_html(self.link)}">Open in Odoo</a>')
        return "\n".join(f"<p>{part}</p>" for part in parts)

    @staticmethod
    def _line(line: tuple[Field, ...], labelled: str, escape: Callable[[str], str]) -> str:
        return " · ".join(
            labelled.format(escape(label), escape(value)) if label else escape(value)
            for label, value in line
        )


def text(value: Any) -> str:
    """A payload value as text for a reader: bounded, neutralised, missing values as a dash."""
    if value is None or value == "" or value is False:
        return MISSING
    if isinstance(value, (dict, list)):
        return MISSING
    shown = neutralise(str(value)[: MAX_VALUE_CHARS + 1]).strip()
    if len(shown) > MAX_VALUE_CHARS:
        shown = shown[: MAX_VALUE_CHARS - 1] + "…"
    return shown or MISSING


def amount(value: Any, currency: Any) -> str:
    """``PHP 1,250.50``; a value that is not a number is shown as sent."""
    try:
        number = Decimal(str(value)[:MAX_VALUE_CHARS])
    except (InvalidOperation, ValueError):
        number = None
    if number is None or not number.is_finite() or number.adjusted() >= MAX_AMOUNT_DIGITS:
        return text(value) if currency in (None, "") else f"{text(currency)} {text(value)}"
    shown = f"{number:,.2f}"
    return shown if currency in (None, "") else f"{text(currency)} {shown}"


def odoo_link(base_url: str | None, model: str, record_id: Any) -> str | None:
    """Odoo 18's URL of a record's form: ``{base}/odoo/{model}/{id}``."""
    if not base_url or not isinstance(record_id, (int, str)) or not str(record_id).isdigit():
        return None
    return f"{base_url.rstrip('/')}/odoo/{model}/{record_id}"


def _headline(event_type: str) -> tuple[str, str]:
    """The catalog's emoji and title of ``event_type`` (a generic pair for other types)."""
    spec = lookup(event_type)
    return (spec.emoji, spec.title) if spec else (GENERIC_EMOJI, f"Event {text(event_type)}")


def _link(event_type: str, payload: Mapping[str, Any], base_url: str | None) -> str | None:
    spec = lookup(event_type)
    if spec is None:
        return None
    return odoo_link(base_url, spec.domain.link_model, payload.get(spec.domain.link_field))


def format_expense(event_type: str, payload: Mapping[str, Any], base_url: str | None) -> Message:
    """An expense event as a message: who, how much, what for, and a link to the expense."""
    who = text(payload.get("employee_name"))
    if payload.get("employee_code"):
        who += f" ({text(payload.get('employee_code'))})"
    return Message(
        *_headline(event_type),
        (
            (("Employee", who),),
            (("Amount", amount(payload.get("amount"), payload.get("currency"))),),
            (("Description", text(payload.get("description"))),),
            (("Category", text(payload.get("category"))), ("Date", text(payload.get("date")))),
        ),
        _link(event_type, payload, base_url),
    )


def format_asset(event_type: str, payload: Mapping[str, Any], base_url: str | None) -> Message:
    asset = text(payload.get("asset_name"))
    if payload.get("asset_category"):
        asset += f" ({text(payload.get('asset_category'))})"
    return Message(
        *_headline(event_type),
        (
            (("Asset", asset),),
            (("Booked by", text(payload.get("reserved_by_name"))),),
            (("From", text(payload.get("reserved_from"))), ("To", text(payload.get("reserved_to")))),
            (("Booking state", text(payload.get("booking_state"))),),
        ),
        _link(event_type, payload, base_url),
    )


def format_finance_task(event_type: str, payload: Mapping[str, Any], base_url: str | None) -> Message:
    lines: list[tuple[Field, ...]] = [
        (("Task", text(payload.get("task_code"))), ("", text(payload.get("task_name")))),
        (("BIR form", text(payload.get("bir_form"))), ("Period", text(payload.get("period_covered")))),
        (("Assigned to", text(payload.get("assigned_to"))),),
        (
            ("Prepare by", text(payload.get("prep_deadline"))),
            ("File by", text(payload.get("filing_deadline"))),
        ),
    ]
    if event_type.endswith(".overdue") or payload.get("days_overdue"):
        lines.append((("Days overdue", text(payload.get("days_overdue"))),))
    return Message(*_headline(event_type), tuple(lines), _link(event_type, payload, base_url))


def format_generic(event_type: str, payload: Mapping[str, Any], base_url: str | None) -> Message:
    """A type outside the catalog: its first 12 payload fields, as text."""
    shown = tuple(((text(key), text(value)),) for key, value in list(payload.items())[:12])
    return Message(GENERIC_EMOJI, f"Event {text(event_type)}", shown or ((("", "(no payload)"),),))


Formatter = Callable[[str, Mapping[str, Any], "str | None"], Message]
FORMATTERS: Mapping[str, Formatter] = {
    "expense": format_expense,
    "asset": format_asset,
    "finance_task": format_finance_task,
    "generic": format_generic,
}


def format_event(
    event_type: str, payload: Any, *, formatter: str = "auto", odoo_base_url: str | None = None
) -> Message:
    """The message for one event; ``auto`` picks the formatter of the event's catalog domain."""
    if formatter == "auto":
        spec = lookup(event_type)
        formatter = spec.domain.name if spec else "generic"
    fields = payload if isinstance(payload, Mapping) else {}
    return FORMATTERS[formatter](event_type, fields, odoo_base_url)
