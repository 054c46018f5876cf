"""Sending one signed event to a receiver: `ipai-bus send`, the demo, and scripts."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from ..core.catalog import Envelope, lookup, new_envelope, parse_envelope
from ..core.errors import ConfigurationError, EnvelopeError, IpaiBusError
from ..core.samples import sample_envelope
from ..core.secret_files import config_dir
from ..core.settings import Settings, read_secret_file
from ..core.signing import signature_headers
from .receiver import WEBHOOK_PATH


class ReceiverUnreachable(IpaiBusError):
    """No receiver answered at the URL."""


def receiver_url(settings: Settings, path: str = WEBHOOK_PATH) -> str:
    """The local receiver's URL of ``path`` (the webhook by default, or HEALTH_PATH)."""
    return f"http://{settings.receiver_host}:{settings.receiver_port}{path}"


def signing_secret(settings: Settings) -> str:
    """The secret to sign with: IPAI_WEBHOOK_SECRET(_FILE), else the one `ipai-bus up` made."""
    if settings.webhook_secrets:
        return settings.webhook_secrets[0]
    path = config_dir(settings.config_dir) / "webhook-secret"
    if path.exists():
        return read_secret_file(path, setting=str(path))[0]
    raise ConfigurationError(
        "no webhook secret: set IPAI_WEBHOOK_SECRET, or run `ipai-bus up` once to make one",
        setting="IPAI_WEBHOOK_SECRET",
    )


def post_event(
    url: str, envelope: Envelope, *, secret: str, key: str, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """Sign and POST one envelope; returns the HTTP status and the receiver's JSON answer."""
    body = envelope.to_bytes()
    request = urllib.request.Request(
        url, data=body, method="POST", headers=signature_headers(secret, body, idempotency_key=key)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as answer:
        try:
            document = json.loads(answer.read() or b"{}")
        except ValueError:
            document = {"ok": False, "error": f"HTTP {answer.code} (not JSON)"}
        return answer.code, document
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReceiverUnreachable(
            f"no receiver at {url}: {reason} (is `ipai-bus up` running?)"
        ) from None


def envelope_from_arguments(args: argparse.Namespace) -> Envelope:
    """The envelope `ipai-bus send` was asked for; raises ConfigurationError when it is unclear."""
    try:
        if args.file:
            return parse_envelope(json.loads(Path(args.file).read_text(encoding="utf-8")))
        if args.sample:
            if lookup(args.event_type) is None:
                raise ConfigurationError(
                    f"--sample needs a catalogued type; {args.event_type} is not one"
                )
            return sample_envelope(args.event_type)
        if not args.aggregate_id:
            raise ConfigurationError("--type needs --aggregate-id (or --sample)")
        payload = json.loads(args.payload) if args.payload else {}
        if lookup(args.event_type) and not args.aggregate_type:
            return new_envelope(args.event_type, args.aggregate_id, payload)
        return parse_envelope(
            {
                "event_type": args.event_type,
                "payload": payload,
                "aggregate_type": args.aggregate_type or "unknown",
                "aggregate_id": args.aggregate_id,
            }
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror}") from None
    except EnvelopeError as exc:
        raise ConfigurationError(f"not a valid event: {exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"not valid JSON: {exc}") from None


def send_from_arguments(args: argparse.Namespace, settings: Settings) -> int:
    envelope = envelope_from_arguments(args)
    key = args.key or f"manual:{envelope.event_type}:{uuid.uuid4()}"
    url = args.url or receiver_url(settings)
    status, answer = post_event(url, envelope, secret=signing_secret(settings), key=key)
    print(f"HTTP {status} {json.dumps(answer)}")
    return 0 if status == 200 else 1
