"""Mattermost incoming webhooks."""

from __future__ import annotations

import json

from ...core.stored_event import StoredEvent
from ...core.tracing import outgoing_headers
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS
from .http_client import KeepAliveClient, post_json

# Mattermost answers 400 for a post it cannot take (bad JSON, a text over its limit) and 413 for
# a body too large; a 404 (a hook not yet created, a typo being fixed) is retried.
MATTERMOST_PERMANENT_REFUSALS = frozenset({400, 413})


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
    ) -> None:
        self.name, self.url, self.timeout, self.permanent = name, url, timeout, permanent
        self.fields = {
            key: value
            for key, value in {"username": username, "icon_url": icon_url, "channel": channel}.items()
            if value
        }
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        assert message is not None
        body = json.dumps({"text": message.markdown, **self.fields}).encode()
        headers = outgoing_headers(event.trace)
        return post_json(self.client, self.url, body, headers, permanent=self.permanent)

    def close(self) -> None:
        self.client.close()
