"""The event catalog and the envelope's validation (no database)."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from ipai_bus_lib.core import catalog, odoo_key
from ipai_bus_lib.core import envelope as envelopes
from ipai_bus_lib.core.errors import EnvelopeError

VALID = {
    "event_type": "expense.submitted",
    "aggregate_type": "hr.expense",
    "aggregate_id": "42",
    "payload": {"amount": 10},
    "occurred_at": "2026-01-22T07:26:26Z",
    "source": "odoo",
}


def test_catalog_has_the_fourteen_types_of_the_design():
    assert len(catalog.CATALOG) == 14
    by_domain = {}
    for spec in catalog.CATALOG.values():
        by_domain.setdefault(spec.domain.aggregate_type, []).append(spec.step)
    assert by_domain == {
        "hr.expense": ["submitted", "approved", "rejected", "paid"],
        "maintenance.equipment": ["reserved", "checked_out", "checked_in", "overdue"],
        "project.task": ["created", "in_progress", "submitted", "approved", "filed", "overdue"],
    }


def test_build_payload_fills_every_catalog_field_in_order():
    payload = catalog.build_payload("expense.paid", {"amount": 5.5, "date": date(2026, 1, 2)})
    assert list(payload) == list(catalog.EXPENSE.payload_fields)
    assert payload["amount"] == 5.5 and payload["date"] == "2026-01-02"
    assert payload["employee_name"] is None


def test_build_payload_refuses_a_field_the_catalog_lacks():
    with pytest.raises(EnvelopeError, match="no field"):
        catalog.build_payload("expense.paid", {"amount": 1, "iban": "x"})


def test_build_payload_refuses_an_uncatalogued_type():
    with pytest.raises(EnvelopeError, match="not in the event catalog"):
        catalog.build_payload("expense.teleported", {})


def test_new_envelope_takes_aggregate_type_from_the_catalog():
    moment = datetime(2026, 1, 22, 7, 26, 26, 123456, tzinfo=timezone.utc)
    envelope = envelopes.new_envelope("asset.reserved", 7, {"booking_id": 3}, occurred_at=moment)
    assert envelope.aggregate_type == "maintenance.equipment"
    assert envelope.aggregate_id == "7"
    assert envelope.occurred_at == "2026-01-22T07:26:26Z"
    assert envelopes.parse_envelope(__import__("json").loads(envelope.to_bytes())) == envelope


def test_parse_accepts_the_contract_shape_and_numeric_aggregate_id():
    envelope = envelopes.parse_envelope({**VALID, "aggregate_id": 42})
    assert envelope.aggregate_id == "42"


def test_parse_defaults_source_to_odoo_and_accepts_types_outside_the_catalog():
    document = {key: value for key, value in VALID.items() if key != "source"}
    envelope = envelopes.parse_envelope({**document, "event_type": "test"})
    assert envelope.source == "odoo" and envelope.event_type == "test"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_type": None}, "event_type"),
        ({"event_type": "Expense.Submitted"}, "event_type"),
        ({"event_type": "expense..submitted"}, "event_type"),
        ({"event_type": "test\n"}, "event_type"),
        ({"aggregate_type": ""}, "aggregate_type"),
        ({"aggregate_type": 5}, "aggregate_type"),
        ({"aggregate_id": True}, "aggregate_id"),
        ({"aggregate_id": 1.5}, "aggregate_id"),
        ({"aggregate_id": "x" * 256}, "aggregate_id"),
        ({"payload": [1]}, "payload"),
        ({"payload": "{}"}, "payload"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-02-30T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": "2026-01-22T07:26:26"}, "occurred_at"),
        ({"source": "odoo prod"}, "source"),
    ],
)
def test_parse_names_the_bad_field(change, field):
    document = {**VALID, **change}
    with pytest.raises(EnvelopeError) as caught:
        envelopes.parse_envelope(document)
    assert caught.value.field == field, f"error should name {field}: {caught.value}"


@pytest.mark.parametrize("field", ["event_type", "aggregate_type", "aggregate_id", "payload"])
def test_parse_refuses_a_missing_required_field(field):
    document = {key: value for key, value in VALID.items() if key != field}
    with pytest.raises(EnvelopeError, match=f"missing field: {field}"):
        envelopes.parse_envelope(document)


def test_parse_refuses_a_non_object_body():
    with pytest.raises(EnvelopeError, match="JSON object"):
        envelopes.parse_envelope([VALID])


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"])
def test_bad_idempotency_keys_are_refused(key):
    with pytest.raises(EnvelopeError):
        envelopes.check_idempotency_key(key)


def test_odoo_idempotency_key_reads_naive_write_date_as_utc():
    key = odoo_key.idempotency_key("expense.submitted", 42, datetime(2026, 1, 22, 7, 26, 26))
    assert key == "expense.submitted:42:1769066786.0"


# --- the catalog is the one place that knows the event types ---------------------------------------


def _sources_outside_the_catalog():
    root = Path(__file__).resolve().parent.parent
    library = [path for path in (root / "ipai_bus_lib").rglob("*.py") if path.name != "catalog.py"]
    addons = [path for path in (root / "addons").rglob("*.py") if "tests" not in path.parts]
    return [*library, *addons, root / "supabase" / "functions" / "odoo-webhook" / "handler.ts"]


def test_no_event_type_is_known_anywhere_but_the_catalog():
    """Formatters, samples, routes and the Odoo addons read types from the catalog: no module
    names a catalogued type itself, or builds one from a domain's name."""
    names = "|".join(re.escape(name) for name in catalog.CATALOG)
    domains = "|".join(domain.name for domain in catalog.DOMAINS)
    literal = re.compile(rf"[\"']({names})[\"']")
    built = re.compile(rf"f[\"']({domains})\.\{{")
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in _sources_outside_the_catalog()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line) or built.search(line)
    ]
    assert not found, "event types named outside the catalog:\n" + "\n".join(found)


def test_every_type_has_its_emoji_title_link_and_a_valid_sample():
    from ipai_bus_lib.core.samples import sample_envelope

    for name, spec in catalog.CATALOG.items():
        assert spec.emoji and spec.title.startswith(spec.domain.title.split()[0]), name
        sample = sample_envelope(name)
        assert list(sample.payload) == list(spec.payload_fields), name
        assert sample.payload[spec.domain.link_field] is not None, name
    with pytest.raises(EnvelopeError):
        catalog.FINANCE_TASK.event_type("archived")


def test_names_that_left_the_catalog_still_import_from_it_with_a_warning():
    """Addons of the previous release import these from core.catalog: the upgrade installs
    the library first, so they must resolve, to the one object now kept elsewhere."""
    from ipai_bus_lib.core import batch, contract

    with pytest.warns(DeprecationWarning, match="moved to ipai_bus_lib.core.envelope"):
        assert catalog.Envelope is envelopes.Envelope
    with pytest.warns(DeprecationWarning):
        assert catalog.SOURCE_PATTERN is contract.SOURCE_PATTERN
    with pytest.warns(DeprecationWarning):
        assert catalog.parse_batch_event is batch.parse_batch_event
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        catalog.Nothing  # noqa: B018
