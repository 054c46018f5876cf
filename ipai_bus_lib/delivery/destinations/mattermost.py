"""Mattermost incoming webhooks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...core import chat_actions
from ...core.catalog import lookup
from ...core.stored_event import StoredEvent
from ...core.tracing import outgoing_headers
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS
from .http_client import KeepAliveClient, post_json

# Mattermost answers 400 for a post it cannot take (bad JSON, a text over its limit) and 413 for
# a body too large; a 404 (a hook not yet created, a typo being fixed) is retried.
MATTERMOST_PERMANENT_REFUSALS = frozenset({400, 413})


@dataclass(frozen=True)
class ActionButtons:
    """Buttons on the messages whose event type offers actions (the catalog says which): each
    posts back to ``callback_url`` (Odoo's endpoint) with a capability signed by ``key`` for
    ``who`` (``channel:<id>`` or ``user:<id>``), valid ``lifetime_seconds``."""

    callback_url: str
    key: str
    who: str
    lifetime_seconds: int = chat_actions.DEFAULT_LIFETIME_SECONDS

    def for_event(self, event: StoredEvent, message: Message) -> list[dict[str, Any]]:
        """Mattermost's ``actions`` for this event; none for a type without actions or a
        payload that does not name its record. Each context also carries the record and the
        post's text, unsigned: Odoo refuses a capability copied under another record, and
        writes the outcome under the text (Mattermost's answer replaces the whole post)."""
        spec = lookup(event.event_type)
        payload = event.payload if isinstance(event.payload, dict) else {}
        record_id = payload.get(spec.domain.link_field) if spec else None
        if not spec or not spec.actions or type(record_id) is not int:
            return []
        if not 0 < record_id < chat_actions.MAX_RECORD_ID:
            return []  # no Odoo record has that id: the message goes without buttons
        record = f"{spec.domain.link_model}/{record_id}"
        return [
            {
                "id": action.button_id,
                "name": action.label,
                "style": action.style,
                "integration": {
                    "url": self.callback_url,
                    "context": {
                        "action": action.name,
                        "record": record,
                        "message": message.markdown,
                        "capability": chat_actions.issue(
                            self.key,
                            action=action.name,
                            event_id=str(event.id),
                            record=record,
                            who=self.who,
                            lifetime_seconds=self.lifetime_seconds,
                        ),
                    },
                },
            }
            for action in spec.actions
        ]


class MattermostDestination:
    """A Mattermost incoming webhook: ``text``, ``username``, ``icon_url``, optional ``channel``."""

    needs_message = True
    waits_on_network = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        channel: str | None = None,
        username: str = "IPAI Bus",
        icon_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        permanent: frozenset[int] = MATTERMOST_PERMANENT_REFUSALS,
        actions: ActionButtons | None = None,
    ) -> None:
        self.name, self.url, self.timeout, self.permanent = name, url, timeout, permanent
        self.actions = actions
        self.fields = {
            key: value
            for key, value in {"username": username, "icon_url": icon_url, "channel": channel}.items()
            if value
        }
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        assert message is not None
        post: dict[str, Any] = {"text": message.markdown, **self.fields}
        buttons = self.actions.for_event(event, message) if self.actions else []
        if buttons:
            post["attachments"] = [{"fallback": message.plain_text, "actions": buttons}]
        body = json.dumps(post).encode()
        headers = outgoing_headers(event.trace)
        return post_json(self.client, self.url, body, headers, permanent=self.permanent)

    def close(self) -> None:
        self.client.close()
