"""Signing: the shared known-answer vectors, and one test per way a signed request can be broken."""

from __future__ import annotations

import json

import pytest

from ipai_bus_lib.core import errors, signing

SECRET = "test-secret-for-unit-tests-only"
BODY = b'{"event_type":"test","aggregate_type":"t","aggregate_id":"1","payload":{}}'
NOW = 1_769_066_786_000

VERDICTS = {
    "valid": None,
    "invalid_signature": errors.InvalidSignature,
    "stale": errors.StaleTimestamp,
    "future": errors.FutureTimestamp,
    "missing_signature": errors.MissingSignature,
    "missing_timestamp": errors.MissingTimestamp,
    "malformed_timestamp": errors.MalformedTimestamp,
}


def load_vectors(path):
    return json.loads(path.read_text(encoding="utf-8"))["vectors"]


def test_vectors_cover_every_verdict(vectors_path):
    """The shared file exercises every verdict the Deno suite must also reproduce."""
    seen = {vector["expected"] for vector in load_vectors(vectors_path)}
    assert seen == set(VERDICTS), f"vectors lack verdicts {set(VERDICTS) - seen}"


def test_sign_reproduces_known_digests(vectors_path):
    """sign() gives the openssl-computed digest of each vector (a fixed known-answer test)."""
    for vector in load_vectors(vectors_path):
        if vector["expected_digest"] is None or not vector["timestamp"].isdigit():
            continue
        digest = signing.sign(
            vector["active_secrets"][0],
            vector["body"].encode(),
            timestamp_ms=int(vector["timestamp"]),
        )
        assert digest == vector["expected_digest"], f"digest differs for vector {vector['name']}"


@pytest.mark.parametrize(
    "vector",
    load_vectors(__import__("pathlib").Path(__file__).parent / "vectors" / "signing.json"),
    ids=lambda vector: vector["name"],
)
def test_vector_verdict(vector):
    """verify() reaches each vector's expected verdict."""
    headers = {"X-IPAI-Timestamp": vector["timestamp"], "X-Ipai-Signature": vector["signature_header"]}
    expected = VERDICTS[vector["expected"]]
    call = lambda: signing.verify(  # noqa: E731
        vector["active_secrets"], vector["body"].encode(), headers, now=vector["now_ms"]
    )
    if expected is None:
        assert call().timestamp_ms == int(vector["timestamp"])
    else:
        with pytest.raises(expected):
            call()


def signed_headers(*, body: bytes = BODY, timestamp: int = NOW, secret: str = SECRET) -> dict:
    return signing.signature_headers(secret, body, idempotency_key="k", timestamp_ms=timestamp)


def test_valid_request_is_accepted():
    verified = signing.verify([SECRET], BODY, signed_headers(), now=NOW)
    assert verified.timestamp_ms == NOW


def test_tampered_body_is_refused():
    with pytest.raises(errors.InvalidSignature):
        signing.verify([SECRET], BODY.replace(b'"1"', b'"2"'), signed_headers(), now=NOW)


def test_tampered_timestamp_is_refused():
    headers = signed_headers()
    headers["x-ipai-timestamp"] = str(NOW + 1)
    with pytest.raises(errors.InvalidSignature):
        signing.verify([SECRET], BODY, headers, now=NOW)


def test_stale_timestamp_is_refused():
    with pytest.raises(errors.StaleTimestamp):
        signing.verify([SECRET], BODY, signed_headers(), now=NOW + 300_001)


def test_future_timestamp_is_refused():
    with pytest.raises(errors.FutureTimestamp):
        signing.verify([SECRET], BODY, signed_headers(), now=NOW - 300_001)


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "1e12", "١٢٣", "9" * 17])
def test_malformed_timestamp_is_refused(value):
    headers = signed_headers()
    headers["x-ipai-timestamp"] = value
    with pytest.raises(errors.MalformedTimestamp):
        signing.verify([SECRET], BODY, headers, now=NOW)


def test_missing_timestamp_is_refused():
    headers = signed_headers()
    del headers["x-ipai-timestamp"]
    with pytest.raises(errors.MissingTimestamp):
        signing.verify([SECRET], BODY, headers, now=NOW)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_signature_is_refused(value):
    headers = signed_headers()
    if value is None:
        del headers["x-ipai-signature"]
    else:
        headers["x-ipai-signature"] = value
    with pytest.raises(errors.MissingSignature):
        signing.verify([SECRET], BODY, headers, now=NOW)


def test_wrong_secret_is_refused():
    with pytest.raises(errors.InvalidSignature):
        signing.verify(["another-secret-of-16-chars"], BODY, signed_headers(), now=NOW)


def test_rotation_accepts_either_active_secret():
    headers = signed_headers(secret="the-old-secret-being-retired")
    verified = signing.verify([SECRET, "the-old-secret-being-retired"], BODY, headers, now=NOW)
    assert verified.timestamp_ms == NOW


def test_header_with_too_many_digests_is_refused():
    headers = signed_headers()
    headers["x-ipai-signature"] = ",".join([headers["x-ipai-signature"]] * 9)
    with pytest.raises(errors.InvalidSignature):
        signing.verify([SECRET], BODY, headers, now=NOW)


def test_non_ascii_digest_is_refused_not_crashed():
    headers = signed_headers()
    headers["x-ipai-signature"] = "é" * 64
    with pytest.raises(errors.InvalidSignature):
        signing.verify([SECRET], BODY, headers, now=NOW)


def test_fingerprint_is_the_same_whichever_digest_matched():
    """The replay guard keys on the signed message, not on the digest the sender attached."""
    old = "the-old-secret-being-retired"
    one = signing.verify([SECRET, old], BODY, signed_headers(), now=NOW)
    other = signing.verify([SECRET, old], BODY, signed_headers(secret=old), now=NOW)
    assert one.fingerprint == other.fingerprint


def test_empty_secret_cannot_sign():
    with pytest.raises(ValueError, match="must not be empty"):
        signing.sign("", BODY, timestamp_ms=NOW)


def test_a_timestamp_in_seconds_is_refused_saying_milliseconds_are_expected():
    from ipai_bus_lib.core.errors import StaleTimestamp, TimestampInSeconds

    now = 1_764_000_000_000
    with pytest.raises(TimestampInSeconds, match="read as seconds; x-ipai-timestamp is milliseconds"):
        signing.check_freshness(now // 1000, now=now)
    with pytest.raises(StaleTimestamp) as stale:
        signing.check_freshness(now - 301_000, now=now)
    assert not isinstance(stale.value, TimestampInSeconds), "an old millisecond stamp is just old"
