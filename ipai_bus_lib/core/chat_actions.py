"""Acting from a chat message: which actions an event offers, and the capability each button
carries so that whoever receives the click (Odoo) can tell it was issued by the bus, for this
record, this action and these people, and not yet used.

Mattermost posts a button's ``context`` back to its ``integration.url`` with no signature and no
auth header (its advisory GHSA-wp43-vprh-c3w5 was about trusting such posts), so the context
carries its own proof:

    v1.<claims>.<signature>

``claims`` is the base64url (unpadded) of a compact JSON object; ``signature`` the base64url of
HMAC-SHA256 under the action key over ``"ipai-bus-action.v1." + claims``. The claims name the
event the button came with (``evt``), its record (``rec``, ``model/id``), the action (``act``),
who may use it (``who``: ``channel:<id>`` — anyone in that Mattermost channel — or
``user:<id>``), when it stops working (``exp``, Unix seconds) and a random id (``jti``) the
verifier records when it is used, so that each capability acts at most once.

The action key is not the webhook secret: keys rotate like it (``IPAI_ACTION_KEY`` lists them,
comma-separated, the first signs, any verifies), and only the bus and Odoo hold them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "v1"
SIGNING_PREFIX = b"ipai-bus-action.v1."
MIN_ACTION_KEY_LENGTH = 32
MAX_CAPABILITY_CHARS = 2048
DEFAULT_LIFETIME_SECONDS = 7 * 24 * 3600  # a report submitted on Friday is still approvable on Monday
WHO_PATTERN = re.compile(r"\A(channel|user):[A-Za-z0-9_-]{1,64}\Z")
RECORD_PATTERN = re.compile(r"\A[a-z][a-z0-9_.]*/[0-9]{1,18}\Z")
MAX_RECORD_ID = 10**18  # what RECORD_PATTERN allows
ACTION_PATTERN = re.compile(r"\A[a-z][a-z0-9_]{0,39}\Z")
_B64URL = re.compile(r"\A[A-Za-z0-9_-]+\Z")


class CapabilityRefused(ValueError):
    """A capability that does not authorise anything; ``reason`` is a short, fixed phrase for
    the audit log and the answer (``malformed``, ``bad signature``, ``expired``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Capability:
    """What a verified capability allows: ``action`` on ``record`` (``model/id``), offered with
    event ``event_id``, to ``who``, until ``expires_at``; ``token_id`` is its single-use id."""

    action: str
    event_id: str
    record: str
    who: str
    expires_at: int
    token_id: str

    @property
    def model(self) -> str:
        return self.record.split("/", 1)[0]

    @property
    def record_id(self) -> int:
        return int(self.record.split("/", 1)[1])

    def allows(self, user_id: str, channel_id: str) -> bool:
        """Whether the Mattermost user ``user_id``, clicking in ``channel_id``, is who it names."""
        kind, _, value = self.who.partition(":")
        clicked = user_id if kind == "user" else channel_id
        return hmac.compare_digest(value.encode(), str(clicked or "").encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url: the one canonical spelling of the bytes, or CapabilityRefused.

    Without the round trip, a final character differing only in unused bits would decode to the
    same bytes, and an altered capability would be accepted."""
    if not _B64URL.fullmatch(text):
        raise CapabilityRefused("malformed")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CapabilityRefused("malformed") from None
    if _b64(data) != text:
        raise CapabilityRefused("malformed")
    return data


def _digest(key: str, claims: str) -> bytes:
    return hmac.new(key.encode(), SIGNING_PREFIX + claims.encode(), hashlib.sha256).digest()


def check_action_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """The keys, each long enough; ValueError naming the rule otherwise."""
    kept = tuple(key.strip() for key in keys if key.strip())
    if not kept:
        raise ValueError("no action key: set IPAI_ACTION_KEY (the key Odoo verifies buttons with)")
    if any(len(key) < MIN_ACTION_KEY_LENGTH for key in kept):
        raise ValueError(f"each action key must be at least {MIN_ACTION_KEY_LENGTH} characters")
    return kept


def issue(
    key: str,
    *,
    action: str,
    event_id: str,
    record: str,
    who: str,
    lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
    now: float | None = None,
) -> str:
    """A capability for ``action`` on ``record`` (``model/id``) offered with ``event_id`` to
    ``who`` (``channel:<id>`` or ``user:<id>``), signed with ``key``."""
    check_action_keys([key])
    if not ACTION_PATTERN.fullmatch(action):
        raise ValueError(f"action {action!r}: lowercase letters, digits and _")
    if not RECORD_PATTERN.fullmatch(record):
        raise ValueError(f"record {record!r}: model/id, e.g. hr.expense/42")
    if not WHO_PATTERN.fullmatch(who):
        raise ValueError(f"who {who!r}: channel:<Mattermost channel id> or user:<user id>")
    claims = {
        "act": action,
        "evt": str(event_id),
        "rec": record,
        "who": who,
        "exp": int((time.time() if now is None else now) + lifetime_seconds),
        "jti": secrets.token_hex(16),
    }
    encoded = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{VERSION}.{encoded}.{_b64(_digest(key, encoded))}"


def verify(token: object, keys: Sequence[str], *, now: float | None = None) -> Capability:
    """The capability ``token`` grants, if one of ``keys`` signed it and it has not expired;
    CapabilityRefused otherwise. The signature is compared in constant time, before anything
    in the claims is believed."""
    if not isinstance(token, str) or len(token) > MAX_CAPABILITY_CHARS:
        raise CapabilityRefused("malformed")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise CapabilityRefused("malformed")
    _, encoded, signature = parts
    _unb64(encoded)
    given = _unb64(signature)
    if not any(hmac.compare_digest(_digest(key, encoded), given) for key in check_action_keys(keys)):
        raise CapabilityRefused("bad signature")
    claims = json.loads(_unb64(encoded))
    capability = Capability(
        action=str(claims["act"]),
        event_id=str(claims["evt"]),
        record=str(claims["rec"]),
        who=str(claims["who"]),
        expires_at=int(claims["exp"]),
        token_id=str(claims["jti"]),
    )
    if (time.time() if now is None else now) >= capability.expires_at:
        raise CapabilityRefused("expired")
    return capability
