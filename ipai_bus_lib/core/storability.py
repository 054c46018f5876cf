"""What PostgreSQL can store: text without NUL or lone surrogates, JSON nested at most the
contract's depth. The receiver refuses what fails here rather than fail at the database."""

from __future__ import annotations

import re
from typing import Any

from .contract import MAX_PAYLOAD_DEPTH

# Envelope text fields: no control character, no lone surrogate.
UNSTORABLE_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# What no PostgreSQL text or jsonb value can hold: NUL, and lone surrogates (not UTF-8).
_UNSTORABLE_IN_JSON = re.compile(r"[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` without the characters PostgreSQL cannot store (see is_storable), for text the
    bus writes but did not choose, such as a peer's answer quoted in an error."""
    return _UNSTORABLE_IN_JSON.sub("", text)


def is_storable(value: Any, depth: int = 0) -> bool:
    """True when a decoded JSON value can be stored as jsonb: no NUL, no lone surrogate, and
    nested at most MAX_PAYLOAD_DEPTH deep."""
    if isinstance(value, str):
        return not _UNSTORABLE_IN_JSON.search(value)
    if depth >= MAX_PAYLOAD_DEPTH and isinstance(value, (dict, list)):
        return False
    if isinstance(value, dict):
        return all(is_storable(key) and is_storable(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return all(is_storable(item, depth + 1) for item in value)
    return True
