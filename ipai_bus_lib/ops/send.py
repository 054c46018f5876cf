"""`ipai-bus send`: the events it was asked for (flags, a file, samples, a load), posted through
the one sender (core/sender.py), with the local receiver's URL and secret as defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import uuid
from pathlib import Path

from ..core.batch import parse_batch
from ..core.catalog import lookup
from ..core.contract import MAX_BATCH_EVENTS
from ..core.envelope import Envelope, new_envelope, parse_envelope
from ..core.errors import ConfigurationError, EnvelopeError, IpaiBusError
from ..core.samples import sample_envelope
from ..core.sender import ReceiverUnreachable, post_batch, post_event
from ..core.settings import Settings, active_secrets
from ..ingest.receiver import WEBHOOK_PATH


def receiver_url(settings: Settings, path: str = WEBHOOK_PATH) -> str:
    """The local receiver's URL of ``path`` (the webhook by default, or READY_PATH)."""
    return f"http://{settings.receiver_host}:{settings.receiver_port}{path}"


def signing_secret(settings: Settings) -> str:
    """The secret to sign with: IPAI_WEBHOOK_SECRET(_FILE), else the one `ipai-bus up` made."""
    secrets = active_secrets(settings)
    if secrets:
        return secrets[0]
    raise ConfigurationError(
        "no webhook secret: set IPAI_WEBHOOK_SECRET, or run `ipai-bus up` once to make one",
        setting="IPAI_WEBHOOK_SECRET",
    )


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
            sample = sample_envelope(args.event_type)
            if args.aggregate_id:  # the sample's payload, for the record asked for
                return dataclasses.replace(sample, aggregate_id=args.aggregate_id)
            return sample
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


def batch_from_file(path: str) -> list[tuple[Envelope, str]] | None:
    """A file holding ``{"events": [...]}`` as (envelope, key) pairs; None for a single envelope.

    Raises ConfigurationError naming the first event the receiver would refuse.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"not valid JSON: {exc}") from None
    if not (isinstance(document, dict) and "events" in document):
        return None
    try:
        events = parse_batch(document)
    except EnvelopeError as exc:
        raise ConfigurationError(f"not a valid batch: {exc}") from None
    for position, event in enumerate(events):
        if event.refusal:
            raise ConfigurationError(
                f"event {position + 1} of {path} (events[{position}]) is not valid: {event.refusal}"
            )
    return [(event.envelope, event.idempotency_key) for event in events]  # type: ignore[misc]


@dataclasses.dataclass
class LoadReport:
    """What a `send --count` run did."""

    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    failed_requests: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.sent / self.seconds if self.seconds else 0.0
        return (
            f"sent {self.sent} events in {self.seconds:.2f} s ({rate:,.0f} events/s): "
            f"{self.stored} stored, {self.duplicates} duplicates, {self.refused} refused, "
            f"{self.failed_requests} failed requests"
        )


def send_load(url: str, envelope: Envelope, *, count: int, batch_size: int, secret: str) -> LoadReport:
    """Send ``count`` copies of ``envelope`` (each its own record and key) in batches."""
    run = uuid.uuid4().hex[:8]
    report = LoadReport()
    started = time.perf_counter()
    for first in range(0, count, batch_size):
        numbers = range(first, min(first + batch_size, count))
        events = [
            (dataclasses.replace(envelope, aggregate_id=f"load-{run}-{n}"), f"load:{run}:{n}")
            for n in numbers
        ]
        status, answer = post_batch(url, events, secret=secret)
        report.sent += len(events)
        if status != 200:
            report.failed_requests += 1
            print(f"HTTP {status} {json.dumps(answer)}")
            continue
        report.stored += answer["stored"]
        report.duplicates += answer["duplicates"]
        report.refused += answer["refused"]
    report.seconds = time.perf_counter() - started
    return report


def send_from_arguments(args: argparse.Namespace, settings: Settings) -> int:
    """`ipai-bus send`: post what the arguments ask for; returns the exit code."""
    url = args.url or receiver_url(settings)
    try:
        return _send(args, settings, url)
    except ReceiverUnreachable as exc:
        raise IpaiBusError(f"{exc} (is `ipai-bus up` running?)") from None


def _send(args: argparse.Namespace, settings: Settings, url: str) -> int:
    secret = signing_secret(settings)
    batch = batch_from_file(args.file) if args.file else None
    if batch is not None:
        if len(batch) > MAX_BATCH_EVENTS:
            raise ConfigurationError(
                f"{args.file} holds {len(batch)} events: at most {MAX_BATCH_EVENTS}"
            )
        if args.key:
            raise ConfigurationError(
                f"--key names one event's key; the events of {args.file} carry their own"
            )
        status, answer = post_batch(url, batch, secret=secret)
        print(f"HTTP {status} {json.dumps(answer)}")
        return 0 if status == 200 and not answer.get("refused") else 1
    envelope = envelope_from_arguments(args)
    if args.count:
        report = send_load(url, envelope, count=args.count, batch_size=args.batch_size, secret=secret)
        print(report.line())
        return 0 if report.stored == report.sent else 1
    key = args.key or f"manual:{envelope.event_type}:{uuid.uuid4()}"
    status, answer = post_event(url, envelope, secret=secret, key=key)
    print(f"HTTP {status} {json.dumps(answer)}")
    return 0 if status == 200 else 1
