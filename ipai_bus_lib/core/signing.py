"""Signing and verifying webhook requests: HMAC-SHA256 over "{timestamp}.{raw_body}".

The one implementation of the signing rule. Odoo's addon signs with it; the receiver verifies with
it; the Edge Function's implementation is checked against the same vectors under tests/vectors/.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .contract import (
    IDEMPOTENCY_KEY_HEADER,
    MAX_DIGESTS_PER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TIMESTAMP_PATTERN,
    TOLERANCE_SECONDS,
)
from .errors import (
    FutureTimestamp,
    InvalidSignature,
    MalformedTimestamp,
    MissingSignature,
    MissingTimestamp,
    StaleTimestamp,
    TimestampInSeconds,
)

Secret = str | bytes


def now_ms() -> int:
    """Milliseconds since the Unix epoch, the unit of x-ipai-timestamp."""
    return time.time_ns() // 1_000_000


def _key(secret: Secret) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signed_message(timestamp_ms: int | str, body: bytes) -> bytes:
    """The exact bytes that are signed: ``b"{timestamp}." + raw_body``."""
    return str(timestamp_ms).encode() + b"." + body


def sign(secret: Secret, body: bytes, *, timestamp_ms: int) -> str:
    """Lowercase hex HMAC-SHA256 of ``"{timestamp_ms}.{body}"`` under ``secret``."""
    if not _key(secret):
        raise ValueError("the webhook secret must not be empty")
    return hmac.new(_key(secret), signed_message(timestamp_ms, body), hashlib.sha256).hexdigest()


def signature_headers(
    secrets: Secret | Sequence[Secret],
    body: bytes,
    *,
    idempotency_key: str | None,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The headers of a signed request; several secrets give several comma-separated digests.
    ``idempotency_key`` is the event's key on the single-event path, None on the batch path
    (each event's key is in the body)."""
    keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    stamp = now_ms() if timestamp_ms is None else timestamp_ms
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(stamp),
        SIGNATURE_HEADER: ",".join(sign(key, body, timestamp_ms=stamp) for key in keys),
    }
    if idempotency_key is not None:
        headers[IDEMPOTENCY_KEY_HEADER] = idempotency_key
    return headers


def parse_timestamp(header: str | None) -> int:
    """x-ipai-timestamp as integer milliseconds; raises MissingTimestamp or MalformedTimestamp."""
    if header is None or header.strip() == "":
        raise MissingTimestamp()
    value = header.strip()
    if not TIMESTAMP_PATTERN.fullmatch(value):
        raise MalformedTimestamp()
    return int(value)


def check_freshness(
    timestamp_ms: int, *, now: int | None = None, tolerance_seconds: int = TOLERANCE_SECONDS
) -> None:
    """Raise StaleTimestamp or FutureTimestamp when the timestamp is outside the window."""
    current = now_ms() if now is None else now
    if timestamp_ms < current - tolerance_seconds * 1000:
        if abs(timestamp_ms * 1000 - current) <= tolerance_seconds * 1000:
            raise TimestampInSeconds()
        raise StaleTimestamp()
    if timestamp_ms > current + tolerance_seconds * 1000:
        raise FutureTimestamp()


@dataclass(frozen=True)
class Verified:
    """What a valid signature proves: when the request was signed, and which message it signs.

    ``fingerprint`` is the sha256 hex of the signed message. The receiver stores it with the event
    to bind an accepted signature to its idempotency key; binding the message rather than one
    digest means a resend carrying only another of its digests (rotation headers carry several)
    is still recognised as the same signature. ``message`` and ``signatures`` (the header's
    digests, comma-separated) are what the audit keeps, so the signature can be re-verified later.
    """

    timestamp_ms: int
    fingerprint: str
    message: bytes = b""
    signatures: str = ""


def verify(
    secrets: Sequence[Secret],
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: int | None = None,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> Verified:
    """Check a request's signature headers against every active secret.

    ``headers`` may use any case. Returns the verified timestamp and message fingerprint. Raises
    MissingTimestamp, MalformedTimestamp, StaleTimestamp, FutureTimestamp, MissingSignature or
    InvalidSignature, checked in that order.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp_text = lowered.get(TIMESTAMP_HEADER)
    timestamp_ms = parse_timestamp(timestamp_text)
    check_freshness(timestamp_ms, now=now, tolerance_seconds=tolerance_seconds)
    digests = _header_digests(lowered.get(SIGNATURE_HEADER))
    # The digits exactly as sent are what the sender signed (a leading zero stays).
    message = signed_message(str(timestamp_text).strip(), body)
    if not any_digest_matches(secrets, message, digests):
        raise InvalidSignature()
    return Verified(timestamp_ms, hashlib.sha256(message).hexdigest(), message, ",".join(digests))


def _header_digests(header: str | None) -> list[str]:
    if header is None or header.strip() == "":
        raise MissingSignature()
    digests = [part.strip().lower() for part in header.split(",") if part.strip()]
    if not digests or len(digests) > MAX_DIGESTS_PER_HEADER:
        raise InvalidSignature()
    return digests


def any_digest_matches(secrets: Sequence[Secret], message: bytes, digests: Sequence[str]) -> bool:
    """True when some digest equals HMAC(secret, message) for some secret; constant-time compare."""
    matched = False
    for secret in secrets:
        expected = hmac.new(_key(secret), message, hashlib.sha256).hexdigest().encode()
        for digest in digests:
            # Every pair is compared, so the time taken does not tell which one matched.
            matched |= hmac.compare_digest(expected, digest.encode("ascii", "replace"))
    return matched


# --- outgoing: the Standard Webhooks rule, for the router's HTTP forward destination --------------

STANDARD_WEBHOOKS_SECRET_PREFIX = "whsec_"
# The spec's symmetric keys: 24 to 64 random bytes.
STANDARD_WEBHOOKS_KEY_BYTES = range(24, 65)
NEW_WHSEC_HINT = "make one with `ipai-bus secret new --whsec` and give it to both sides"


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret, read the one way every reader reads it.

    A secret is ``whsec_`` followed by canonical base64 (standard alphabet, padded, nothing
    else) of 24 to 64 bytes. Whatever a verifier could read otherwise is refused with a
    ValueError saying why: without the prefix (a hex string is valid base64 too, but a
    hand-written check takes its characters as the key), padding left out or bits set that
    strict decoders refuse and lenient ones ignore, other characters, a key out of range.
    """
    if not secret.startswith(STANDARD_WEBHOOKS_SECRET_PREFIX):
        raise ValueError(
            "a Standard Webhooks secret starts with whsec_ (without it, a verifier may take the"
            f" characters as the key where the bus base64-decodes them); {NEW_WHSEC_HINT}"
        )
    encoded = secret[len(STANDARD_WEBHOOKS_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(
            f"a Standard Webhooks secret is whsec_ followed by base64; {NEW_WHSEC_HINT}"
        ) from None
    if base64.b64encode(key).decode("ascii") != encoded:
        raise ValueError(
            "this secret's base64 is not in its one canonical form (padding or trailing bits),"
            f" which Standard Webhooks libraries decode differently; {NEW_WHSEC_HINT}"
        )
    if len(key) not in STANDARD_WEBHOOKS_KEY_BYTES:
        raise ValueError(
            f"this secret's key is {len(key)} bytes; Standard Webhooks keys are"
            f" {STANDARD_WEBHOOKS_KEY_BYTES.start} to {STANDARD_WEBHOOKS_KEY_BYTES.stop - 1};"
            f" {NEW_WHSEC_HINT}"
        )
    return key


def new_standard_webhooks_secret() -> str:
    """``whsec_`` and the base64 of 32 bytes from the operating system's random source."""
    import secrets

    return STANDARD_WEBHOOKS_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def standard_webhooks_headers(
    key: bytes, *, message_id: str, body: bytes, timestamp_s: int | None = None
) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature per the Standard Webhooks spec.

    ``key`` is the secret's key bytes (standard_webhooks_key); the signature is ``v1,`` +
    base64 HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``.
    """
    stamp = int(time.time()) if timestamp_s is None else timestamp_s
    signed = f"{message_id}.{stamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": f"v1,{digest}",
    }
