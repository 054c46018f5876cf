"""Destinations that stay on this machine: the console (the embedded default), and no-op."""

from __future__ import annotations

import sys
import threading
from typing import Any

from ...core.stored_event import StoredEvent
from ..formatters import Message


class ConsoleDestination:
    """Prints each formatted message (the embedded default, and what `ipai-bus demo` shows)."""

    needs_message = True
    waits_on_network = False
    _lock = threading.Lock()

    def __init__(self, name: str = "console", stream: Any = None) -> None:
        self.name = name
        self.stream = stream or sys.stdout

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        assert message is not None
        with self._lock:
            print(f"--- {event.event_type} {event.id}\n{message.markdown}", file=self.stream, flush=True)
        return None

    def close(self) -> None:
        pass


class NoopDestination:
    """Accepts everything and does nothing: measures the claim → ack path alone."""

    needs_message = False
    waits_on_network = False

    def __init__(self, name: str = "noop") -> None:
        self.name = name

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        return None

    def close(self) -> None:
        pass
