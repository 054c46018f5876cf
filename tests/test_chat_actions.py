"""Buttons on the bus's Mattermost messages: the capability each carries (no byte of it can be
changed and still verify), the message a router posts with them, and the routes-file options
that turn them on. What Odoo does with a click is tested on real Odoo 18, from the addon
(addons/ipai_enterprise_bridge/tests/test_chat_actions.py) and from outside
(tests/test_odoo_chat_actions.py)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipai_bus_lib.core import chat_actions
from ipai_bus_lib.core.catalog import CATALOG
from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.core.errors import ConfigurationError
from ipai_bus_lib.delivery.destinations import SmtpDefaults, build_destination
from ipai_bus_lib.delivery.routes import DestinationSpec
from ipai_bus_lib.storage import outbox

from .sinks import HttpSink
from .test_router import make_router


def add_event(database, event_type: str, expense_id: int) -> uuid.UUID:
    payload = {"expense_id": expense_id, "employee_name": "Maria Santos", "amount": 1250.5}
    with database.transaction() as cursor:
        envelope = Envelope(event_type, "hr.expense", str(expense_id), payload)
        return outbox.record_event(
            cursor, envelope, idempotency_key=f"{event_type}:{expense_id}"
        ).event_id


KEY = "chat-actions-test-key-0123456789abcdef"
OTHER_KEY = "another-action-key-0123456789abcdefgh"
CHANNEL = "channel:4xp9fdt77pncbef59f4k1qe83o"
CALLBACK = "https://odoo.example.ph/ipai_bus/mattermost/action"
SMTP = SmtpDefaults("127.0.0.1", 25, "none", None, None, "bus@example.ph")


def capability(**changes) -> str:
    claims = {
        "action": "approve",
        "event_id": str(uuid.uuid4()),
        "record": "hr.expense/42",
        "who": CHANNEL,
        **changes,
    }
    return chat_actions.issue(KEY, **claims)


def test_a_capability_says_what_it_allows_and_only_to_whom():
    token = capability()
    granted = chat_actions.verify(token, [OTHER_KEY, KEY])  # any key of a rotation verifies
    assert (granted.action, granted.record, granted.model, granted.record_id) == (
        "approve",
        "hr.expense/42",
        "hr.expense",
        42,
    )
    assert granted.allows("any-user", "4xp9fdt77pncbef59f4k1qe83o")
    assert not granted.allows("any-user", "another-channel")
    personal = chat_actions.verify(capability(who="user:abc123"), [KEY])
    assert personal.allows("abc123", "any") and not personal.allows("abc1234", "any")


@pytest.mark.parametrize(
    ("token", "keys", "reason"),
    [
        (None, [KEY], "malformed"),
        ("", [KEY], "malformed"),
        ("v2." + capability()[3:], [KEY], "malformed"),
        (capability() + ".x", [KEY], "malformed"),
        (capability(), [OTHER_KEY], "bad signature"),
        (capability(lifetime_seconds=-1), [KEY], "expired"),
        ("v1." + "A" * 3000 + ".x", [KEY], "malformed"),
    ],
)
def test_what_does_not_verify_says_why(token, keys, reason):
    with pytest.raises(chat_actions.CapabilityRefused) as refused:
        chat_actions.verify(token, keys)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("keys", "says"),
    [([], "set IPAI_ACTION_KEY"), (["short"], "at least 32 characters"), ([" ", ""], "no action key")],
)
def test_no_usable_key_is_a_clear_error(keys, says):
    with pytest.raises(ValueError, match=says):
        chat_actions.verify(capability(), keys)


@pytest.mark.parametrize(
    ("field", "value"),
    [("action", "Approve!"), ("record", "hr.expense/abc"), ("who", "team:x"), ("who", "channel:")],
)
def test_a_capability_for_something_unnamed_is_not_issued(field, value):
    with pytest.raises(ValueError, match=field):
        capability(**{field: value})


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_no_byte_level_change_to_a_capability_is_accepted(data):
    """Replace, insert or delete any one byte anywhere, or any run of them: never accepted."""
    token = capability().encode()
    position = data.draw(st.integers(0, len(token)))
    kind = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
    byte = bytes([data.draw(st.integers(0, 255))])
    if kind == "replace" and position < len(token):
        changed = token[:position] + byte + token[position + 1 :]
    elif kind == "insert":
        changed = token[:position] + byte + token[position:]
    elif kind == "delete" and position < len(token):
        changed = token[:position] + token[position + 1 :]
    else:
        changed = token[:position]
    if changed == token:
        return  # a replacement by the same byte is no change
    with pytest.raises(chat_actions.CapabilityRefused):
        chat_actions.verify(changed.decode("latin-1"), [KEY])


def test_the_last_character_of_a_part_cannot_be_respelled():
    """base64 leaves unused bits in a final character: a lenient decoder reads two spellings as
    the same bytes. Each of the 64 spellings but the issued one is refused."""
    token = capability()
    version, claims, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for last in alphabet.replace(signature[-1], ""):
        with pytest.raises(chat_actions.CapabilityRefused):
            chat_actions.verify(f"{version}.{claims}.{signature[:-1]}{last}", [KEY])


def test_the_catalog_says_which_messages_offer_which_actions():
    offered = {name: [a.name for a in spec.actions] for name, spec in CATALOG.items() if spec.actions}
    assert offered == {
        "expense.submitted": ["approve", "refuse"],
        "finance_task.in_progress": ["submit_filing"],
        "finance_task.submitted": ["approve_filing"],
        "finance_task.approved": ["mark_filed"],
        "finance_task.overdue": ["mark_filed"],
    }
    for spec in CATALOG.values():
        for action in spec.actions:
            assert action.causes in CATALOG, "each act comes back on the bus as a catalog event"
            assert action.button_id.isalnum()


def mattermost(url: str, **options) -> object:
    spec = DestinationSpec("finance", "mattermost", {"url": url, **options})
    return build_destination(spec, {"IPAI_ACTION_KEY": KEY}, smtp=SMTP)


def test_a_message_of_a_submitted_report_carries_approve_and_refuse_buttons(database):
    with HttpSink() as sink:
        destination = mattermost(sink.url, actions_url=CALLBACK, actions_for=CHANNEL)
        router = make_router(database, {"finance": destination})
        event_id = add_event(database, "expense.submitted", 7)
        add_event(database, "expense.approved", 8)
        assert router.run_once() == 2
    posts = {request.json()["text"].split("**")[1]: request.json() for request in sink.received}
    submitted, approved = posts["Expense submitted"], posts["Expense approved"]
    assert "attachments" not in approved, "an approved report offers nothing"
    [attachment] = submitted["attachments"]
    assert attachment["fallback"].startswith("📝 Expense submitted")
    buttons = {button["name"]: button for button in attachment["actions"]}
    assert list(buttons) == ["Approve", "Refuse"]
    assert (buttons["Approve"]["style"], buttons["Refuse"]["style"]) == ("primary", "danger")
    for name, action in (("Approve", "approve"), ("Refuse", "refuse")):
        integration = buttons[name]["integration"]
        assert integration["url"] == CALLBACK
        context = integration["context"]
        assert context["message"] == submitted["text"], "Odoo writes the outcome under it"
        granted = chat_actions.verify(context["capability"], [KEY])
        assert (granted.action, granted.event_id, granted.who) == (action, str(event_id), CHANNEL)
        assert granted.record == context["record"] == "hr.expense/7"


def test_without_the_callback_the_message_is_as_before(database):
    with HttpSink() as sink:
        router = make_router(database, {"finance": mattermost(sink.url)})
        add_event(database, "expense.submitted", 7)
        router.run_once()
    assert set(sink.received[0].json()) == {"text", "username"}


@pytest.mark.parametrize(
    ("options", "env", "says"),
    [
        ({"actions_url": CALLBACK}, {"IPAI_ACTION_KEY": KEY}, "actions_for must say who"),
        ({"actions_url": CALLBACK, "actions_for": "everyone"}, {"IPAI_ACTION_KEY": KEY}, "actions_for"),
        ({"actions_url": CALLBACK, "actions_for": CHANNEL}, {}, "IPAI_ACTION_KEY"),
        ({"actions_url": CALLBACK, "actions_for": CHANNEL}, {"IPAI_ACTION_KEY": "short"}, "32"),
        ({"actions_url": "ftp://odoo", "actions_for": CHANNEL}, {"IPAI_ACTION_KEY": KEY}, "http"),
        (
            {"actions_url": CALLBACK, "actions_for": CHANNEL, "actions_lifetime_hours": 0},
            {"IPAI_ACTION_KEY": KEY},
            "actions_lifetime_hours",
        ),
    ],
)
def test_a_half_configured_callback_is_refused_at_start_saying_what_is_missing(options, env, says):
    spec = DestinationSpec("finance", "mattermost", {"url": "http://127.0.0.1:9/hook", **options})
    with pytest.raises(ConfigurationError, match=says):
        build_destination(spec, env, smtp=SMTP)


def test_a_payload_that_does_not_name_its_record_gets_no_buttons(database):
    """Without a record id a capability could name, the message goes out as it would without."""
    with HttpSink() as sink:
        destination = mattermost(sink.url, actions_url=CALLBACK, actions_for=CHANNEL)
        router = make_router(database, {"finance": destination})
        with database.transaction() as cursor:
            for n, expense_id in enumerate(("9", 0, -3, 10**18, 2**53 - 1 + 0.5)):
                envelope = Envelope(
                    "expense.submitted", "hr.expense", str(n), {"expense_id": expense_id}
                )
                outbox.record_event(cursor, envelope, idempotency_key=f"no-number-{n}")
        assert router.run_once() == 5, "each delivered, none stopped by its odd id"
    assert all("attachments" not in request.json() for request in sink.received)
    assert sink.count() == 5
