"""Mattermost incoming webhooks."""

from __future__ import annotations

import json

from ...storage.outbox import OutboxEvent
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS
from .http_client import KeepAliveClient, post_json


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
    ) -> None:
        self.name, self.url, self.timeout = name, url, timeout
        self.fields = {
            key: value
            for key, value in {"username": username, "icon_url": icon_url, "channel": channel}.items()
            if value
        }
        self.client = KeepAliveClient(timeout)

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        assert message is not None
        body = json.dumps({"text": message.markdown, **self.fields}).encode()
        return post_json(self.client, self.url, body, {})

    def close(self) -> None:
        self.client.close()
