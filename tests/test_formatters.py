"""Formatters and routing rules (no database)."""

from __future__ import annotations

import pytest

from ipai_bus_lib.core.catalog import CATALOG
from ipai_bus_lib.core.errors import ConfigurationError
from ipai_bus_lib.delivery.formatters import format_event
from ipai_bus_lib.delivery.routes import default_routing, load_routing, parse_routing
from ipai_bus_lib.delivery.safe_text import neutralise

FULL_PAYLOADS = {
    "expense": {
        "expense_id": 42,
        "employee_id": 7,
        "employee_name": "Maria Santos",
        "employee_code": "EMP-007",
        "amount": 1250.5,
        "currency": "PHP",
        "description": "Taxi to client",
        "date": "2026-01-22",
        "category": "Travel",
        "state": "submitted",
    },
    "asset": {
        "booking_id": 5,
        "asset_id": 3,
        "asset_name": "Projector X1",
        "asset_category": "AV",
        "reserved_by": 7,
        "reserved_by_name": "Juan dela Cruz",
        "reserved_from": "2026-01-22T09:00:00Z",
        "reserved_to": "2026-01-22T17:00:00Z",
        "booking_state": "reserved",
    },
    "finance_task": {
        "task_id": 11,
        "task_name": "Withholding tax on compensation",
        "task_code": "BIR-1601C-2026-01",
        "bir_form": "1601-C",
        "period_covered": "2026-01",
        "employee_code": "EMP-007",
        "prep_deadline": "2026-02-05",
        "filing_deadline": "2026-02-10",
        "status": "in_progress",
        "assigned_to": "Ana Reyes",
        "logframe_id": 2,
        "logframe_level": "output",
        "days_overdue": 3,
    },
}
EXPECTED_TEXT = {
    "expense": ["Maria Santos (EMP-007)", "PHP 1,250.50", "Taxi to client", "Travel"],
    "asset": ["Projector X1 (AV)", "Juan dela Cruz", "2026-01-22T09:00:00Z"],
    "finance_task": ["BIR-1601C-2026-01", "1601-C", "2026-01", "Ana Reyes", "2026-02-10"],
}
LINKS = {
    "expense": "/odoo/hr.expense/42",
    "asset": "/odoo/ipai.equipment.booking/5",
    "finance_task": "/odoo/project.task/11",
}


@pytest.mark.parametrize("event_type", sorted(CATALOG))
def test_every_event_type_reads_well_with_a_full_payload(event_type):
    domain = CATALOG[event_type].domain.name
    message = format_event(event_type, FULL_PAYLOADS[domain], odoo_base_url="https://erp.example.ph/")
    assert message.emoji == CATALOG[event_type].emoji
    assert message.markdown.startswith(f"{CATALOG[event_type].emoji} **{CATALOG[event_type].title}**")
    for expected in EXPECTED_TEXT[domain]:
        assert neutralise(expected) in message.plain_text, f"{event_type} should show {expected}"
    assert message.link == "https://erp.example.ph" + LINKS[domain]
    if event_type == "finance_task.overdue":
        assert "**Days overdue:** 3" in message.markdown and "Days overdue: 3" in message.plain_text


@pytest.mark.parametrize("event_type", sorted(CATALOG))
@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"amount": "lots", "currency": None, "expense_id": "x", "employee_name": ["odd"], "task_id": -1},
        None,
        [1],
    ],
)
def test_missing_or_odd_fields_give_a_readable_message(event_type, payload):
    message = format_event(event_type, payload, odoo_base_url="https://erp.example.ph")
    assert "—" in message.markdown, "missing values read as a dash"
    assert message.link is None, "no link without a usable record id"
    assert message.plain_text and message.html


def test_expense_states_have_their_emoji():
    assert [
        CATALOG[f"expense.{step}"].emoji for step in ("submitted", "approved", "rejected", "paid")
    ] == ["📝", "✅", "❌", "💰"]


def test_unknown_type_uses_the_generic_formatter():
    message = format_event("test", {"hello": "world"})
    assert message.title == "Event test" and "**hello:** world" in message.markdown


def test_html_escapes_payload_values():
    message = format_event("expense.paid", {"description": "<script>alert(1)</script>"})
    assert "<script>" not in message.html and "&lt;script&gt;" in message.html


def test_default_routing_is_the_seeds():
    table = default_routing({})
    assert [route.pattern for route in table.routes] == ["expense.*", "asset.*", "finance_task.*", "*"]
    assert table.route_for("asset.overdue").formatter == "asset"
    assert table.destinations["console"].type == "console"
    assert default_routing({"MATTERMOST_WEBHOOK_URL": "http://x"}).route_for("test").destinations == (
        "mattermost",
    )


def test_routes_file_is_read_in_order(tmp_path):
    path = tmp_path / "routes.toml"
    path.write_text(
        '[destinations.mm]\ntype = "mattermost"\nurl_env = "MM_URL"\n'
        "rate_per_second = 10\nburst = 100\n"
        '[destinations.out]\ntype = "console"\n'
        '[[routes]]\nmatch = "expense.paid"\ndestinations = ["mm", "out"]\n'
        '[[routes]]\nmatch = "expense.*"\ndestinations = ["out"]\n'
    )
    table = load_routing(path, {"MM_URL": "http://127.0.0.1:1/hook"})
    assert table.route_for("expense.paid").destinations == ("mm", "out")
    assert table.route_for("expense.submitted").destinations == ("out",)
    assert table.route_for("asset.reserved") is None
    assert table.destinations["mm"].rate_per_second == 10 and table.destinations["mm"].burst == 100


BAD_ROUTES = {
    "no routes": ({"destinations": {"c": {"type": "console"}}}, "at least one [[routes]]"),
    "unknown type": (
        {"destinations": {"c": {"type": "pager"}}, "routes": [{"match": "*", "destinations": ["c"]}]},
        "type must be one of",
    ),
    "unknown destination": (
        {"destinations": {}, "routes": [{"match": "*", "destinations": ["c"]}]},
        "no destination named c",
    ),
    "bad pattern": (
        {
            "destinations": {"c": {"type": "console"}},
            "routes": [{"match": "Expense*", "destinations": ["c"]}],
        },
        "match must be",
    ),
    "bad formatter": (
        {
            "destinations": {"c": {"type": "console"}},
            "routes": [{"match": "*", "formatter": "x", "destinations": ["c"]}],
        },
        "formatter must be",
    ),
    "unset secret variable": (
        {
            "destinations": {"m": {"type": "mattermost", "url_env": "NOPE"}},
            "routes": [{"match": "*", "destinations": ["m"]}],
        },
        "NOPE, which is not set",
    ),
    "bad rate": (
        {
            "destinations": {"c": {"type": "console", "rate_per_second": -1}},
            "routes": [{"match": "*", "destinations": ["c"]}],
        },
        "rate_per_second",
    ),
}


@pytest.mark.parametrize("case", BAD_ROUTES, ids=list(BAD_ROUTES))
def test_bad_routes_are_refused_clearly(case):
    document, message = BAD_ROUTES[case]
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("*", r"\*")):
        parse_routing(document, {})


def test_routes_file_that_is_not_toml_is_refused(tmp_path):
    path = tmp_path / "routes.toml"
    path.write_text("[[routes]\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_routing(path, {})
