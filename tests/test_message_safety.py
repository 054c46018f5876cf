"""Payload text reaches a channel or an e-mail as data: the only link is the bus's own, no mention.

Messages are rendered by real parsers: markdown-it-py (CommonMark, tables, strikethrough) with
linkify-it, which links bare domains, ``www.``, e-mail addresses and ``//host`` more eagerly than
Mattermost does, stands in for the channel; Python's HTML parser plus linkify-it for an e-mail
client that links what looks like an address.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linkify_it import LinkifyIt
from markdown_it import MarkdownIt

from ipai_bus_lib.core.catalog import CATALOG
from ipai_bus_lib.delivery.formatters import format_event

BASE_URL = "https://erp.example.ph"
MARKDOWN = MarkdownIt("commonmark", {"linkify": True}).enable(["linkify", "strikethrough", "table"])
LINKIFY = LinkifyIt(options={"fuzzy_ip": True})
# What Mattermost reads as a mention, a channel link, a hashtag or an emoji, in text it renders.
MENTION_LIKE = re.compile(r"@[\w.-]|<!\w|~[\w-]|#[^\W\d_]\w{2,}|:[\w+-]+:")
# The token types the formatters' own Markdown produces: paragraphs of bold labels and text.
OWN_MARKDOWN_TOKENS = {"paragraph_open", "paragraph_close", "inline", "text", "softbreak"}
OWN_INLINE_TOKENS = {"text", "strong_open", "strong_close", "softbreak", "link_open", "link_close"}

HOSTILE_PIECES = [
    "[Approve now](https://evil.example/sso)",
    "![x](https://evil.example/pixel.png)",
    "[click](javascript:alert(document.cookie))",
    "<a href='https://evil.example'>x</a>",
    "<img src=x onerror=alert(1)>",
    "@channel",
    "@all",
    "@here",
    "@maria.santos",
    "<!channel>",
    "<!here>",
    "~town-square",
    "#phishing",
    ":smile:",
    "evil.com",
    "www.evil.com",
    "pay@evil.com",
    "//localhost/x",
    "http://127.0.0.1:8069/web",
    "1.2.3.4",
    "mailto:a@b.co",
    "evil\u3002com",
    "evil\uff0ecom",
    "\n# Heading\n",
    "\r> quote",
    "\n    code",
    "`code`",
    "```",
    "**",
    "__",
    "~~",
    "|a|b|\n|-|-|",
    "\\",
    "\\[",
    "&lt;",
    "&#64;channel",
    "\u202e",
    "\u2028",
    "\x00",
    "<",
    ">",
    "&",
    "]",
    "(",
    ")",
]
HOSTILE_TEXT = st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=6)), max_size=8).map(
    "".join
)
FIELDS = [
    "employee_name",
    "employee_code",
    "description",
    "category",
    "date",
    "currency",
    "amount",
    "asset_name",
    "asset_category",
    "reserved_by_name",
    "reserved_from",
    "reserved_to",
    "booking_state",
    "task_code",
    "task_name",
    "bir_form",
    "period_covered",
    "assigned_to",
    "prep_deadline",
    "filing_deadline",
    "days_overdue",
]
EVENT_TYPES = [*sorted(CATALOG), "custom.thing"]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def markdown_links_and_text(markdown: str) -> tuple[list[str], str]:
    """The hrefs and srcs markdown-it finds, and the text it renders; fails on foreign markup."""
    links, shown = [], []
    for token in MARKDOWN.parse(markdown):
        assert token.type in OWN_MARKDOWN_TOKENS, f"{token.type} in {markdown!r}"
        for child in token.children or []:
            assert child.type in OWN_INLINE_TOKENS, f"{child.type} in {markdown!r}"
            if child.type == "link_open":
                links.append(child.attrs["href"])
            shown.append(child.content)
    return links, "".join(shown)


def linkified(text: str) -> list[str]:
    return [match.url for match in LINKIFY.match(text) or []]


def assert_only_the_bus_link(message) -> None:
    own = [message.link] if message.link else []
    links, shown = markdown_links_and_text(message.markdown)
    assert links == own, message.markdown
    assert not MENTION_LIKE.search(shown), shown
    assert "@" not in message.markdown and "<!" not in message.markdown  # Mattermost's server reads raw
    page = _Tags()
    page.feed(message.html)
    assert {tag for tag, _ in page.tags} <= {"p", "strong", "a"}, message.html
    assert [attrs for tag, attrs in page.tags if tag == "a"] == [[("href", link)] for link in own]
    assert linkified("".join(page.text)) == [], message.html
    assert linkified(message.plain_text) == own, message.plain_text
    assert not MENTION_LIKE.search(message.plain_text), message.plain_text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_type=st.sampled_from(EVENT_TYPES),
    values=st.fixed_dictionaries({name: HOSTILE_TEXT for name in FIELDS}),
    record_id=st.one_of(st.integers(0, 10**6), HOSTILE_TEXT),
    extra_key=HOSTILE_TEXT,
)
def test_whatever_the_payload_holds_the_only_link_is_the_bus_own(
    event_type, values, record_id, extra_key
):
    payload = {**values, extra_key: values["description"]}
    for id_field in ("expense_id", "booking_id", "task_id"):
        payload[id_field] = record_id
    message = format_event(event_type, payload, odoo_base_url=BASE_URL)
    assert_only_the_bus_link(message)


@settings(max_examples=200, deadline=None)
@given(value=HOSTILE_TEXT.filter(lambda value: value.strip()))
def test_every_character_of_a_value_is_still_read_in_order(value):
    """Escaping loses nothing: the channel shows the neutralised value itself, not a part of it."""
    from ipai_bus_lib.delivery.formatters import text

    message = format_event("custom.thing", {"note": value})
    _, shown = markdown_links_and_text(message.markdown)
    assert text(value) in shown


def test_the_issues_expense_reaches_the_channel_with_no_link_but_the_bus_own():
    message = format_event(
        "expense.submitted",
        {
            "expense_id": 7,
            "employee_name": "Juan [Approve now](https://evil.example/sso) @channel",
            "description": "![x](https://evil.example/pixel.png) "
            "[Open in Odoo](https://evil.example/odoo/hr.expense/7) <!channel> @all",
            "category": "[click](javascript:alert(document.cookie))",
        },
        odoo_base_url=BASE_URL,
    )
    assert_only_the_bus_link(message)
    assert message.link == f"{BASE_URL}/odoo/hr.expense/7"
    assert "Juan" in message.plain_text and "Approve now" in message.plain_text, "the text is kept"
