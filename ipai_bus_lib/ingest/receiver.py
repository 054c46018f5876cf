"""The receiver: a WSGI application that verifies signed Odoo events and stores them durably.

Serves ``POST /functions/v1/odoo-webhook`` (the Edge Function's path), its batch sibling
``POST /functions/v1/odoo-webhook/batch``, ``GET /healthz`` (alive), ``GET /readyz`` (database
reachable, migrations current) and ``GET /metrics``. Checks run in
the wire contract's order and stop at the first failure; only a request that passes all of them
reaches the database, where one transaction writes the outbox rows and their event_log copies.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..core import exact_json, signing, tracing
from ..core.batch import BatchEvent, parse_batch
from ..core.contract import BATCH_PATH_SUFFIX, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES
from ..core.envelope import (
    BODY_TOO_DEEP,
    MAX_BODY_DEPTH,
    TOO_DEEP,
    Envelope,
    check_idempotency_key,
    parse_envelope,
)
from ..core.errors import (
    BatchTooLarge,
    DatabaseBusy,
    DatabaseUnavailable,
    EnvelopeError,
    InvalidArgument,
    ReplayedSignature,
    SignatureError,
)
from ..storage import outbox, readiness
from ..storage.db import Database
from ..storage.queries import load
from .metrics import ReceiverMetrics

WEBHOOK_PATH = "/functions/v1/odoo-webhook"
BATCH_PATH = WEBHOOK_PATH + BATCH_PATH_SUFFIX
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
SQL = load("receiver")
MAX_BODY_BYTES = MAX_EVENT_BYTES
_READ_CHUNK = 64 * 1024
_QUICK_FAILURE_SECONDS = 0.25

log = logging.getLogger("ipai_bus.receiver")

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class ReceiverConfig:
    """What the receiver needs to know besides its database."""

    secrets: tuple[str, ...]
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_batch_events: int = MAX_BATCH_EVENTS
    tolerance_seconds: int = signing.TOLERANCE_SECONDS
    max_attempts: int = outbox.DEFAULT_MAX_ATTEMPTS
    # When set, GET /metrics asks for ``Authorization: Bearer <token>``.
    metrics_token: str | None = None


class Refusal(Exception):
    """A request the contract answers with an error status; carries the status and the reason."""

    def __init__(self, status: int, error: str, outcome: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.outcome = outcome


@dataclass(frozen=True)
class Accepted:
    """What a stored (or duplicate) event answers."""

    event_id: str
    event_type: str
    duplicate: bool


@dataclass(frozen=True)
class BatchAccepted:
    """What a batch answers: one result per event, in the request's order."""

    results: list[dict[str, str]]

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result["status"] == status)

    def document(self) -> dict[str, Any]:
        return {
            "ok": True,
            "stored": self.count("stored"),
            "duplicates": self.count("duplicate"),
            "refused": self.count("refused"),
            "results": self.results,
        }


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# A 503 says when to come back; senders (the Odoo outbox, `ipai-bus send`) honour it.
_REFUSAL_HEADERS = {405: [("Allow", "POST")], 503: [("Retry-After", "1")]}


class Receiver:
    """The WSGI application. Thread-safe: one instance serves every request of a process."""

    def __init__(
        self, config: ReceiverConfig, database: Database, metrics: ReceiverMetrics | None = None
    ) -> None:
        if not config.secrets:
            raise ValueError("the receiver needs at least one webhook secret")
        self.config = config
        self.database = database
        self.metrics = metrics or ReceiverMetrics(database)

    def __call__(self, environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == WEBHOOK_PATH:
            return self._webhook(environ, start_response)
        if path == BATCH_PATH:
            return self._webhook(environ, start_response, batch=True)
        if path == HEALTH_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return _json(start_response, 200, {"ok": True})
        if path == READY_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self._readyz(start_response)
        if path == "/metrics" and environ.get("REQUEST_METHOD") == "GET":
            if not self._metrics_allowed(environ):
                return _json(
                    start_response,
                    401,
                    {"ok": False, "error": "metrics need the bearer token (IPAI_METRICS_TOKEN)"},
                    [("WWW-Authenticate", "Bearer")],
                )
            body, content_type = self.metrics.render()
            return _respond(start_response, 200, body, content_type)
        return _json(start_response, 404, {"ok": False, "error": "not found"})

    def _metrics_allowed(self, environ: Mapping[str, Any]) -> bool:
        token = self.config.metrics_token
        if not token:
            return True
        offered = str(environ.get("HTTP_AUTHORIZATION", ""))
        return hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())

    # --- the webhook ------------------------------------------------------------------------

    def _webhook(
        self, environ: Mapping[str, Any], start_response: StartResponse, *, batch: bool = False
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = tracing.parse_trace_context(
            environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_TRACESTATE")
        )
        span = tracing.tracer().start(
            f"receive {tracing.BUS_DESTINATION}",
            "server",
            incoming,
            {
                **tracing.messaging("receive"),
                "http.request.method": "POST",
                "url.path": environ.get("PATH_INFO"),
            },
        )
        try:
            return self._answer_webhook(environ, start_response, batch, started, incoming, span)
        finally:
            span.end()

    def _answer_webhook(
        self,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        batch: bool,
        started: float,
        incoming: tracing.TraceContext | None,
        span: tracing.Span,
    ) -> Iterable[bytes]:
        # What the events keep: the sender's context, else this request's own span (recorded),
        # else none: a router then starts the event's trace itself.
        trace = incoming or (span.context if span.recording else None)
        try:
            accepted = (
                self._accept_batch(environ, trace, span) if batch else self._accept(environ, trace)
            )
        except Refusal as refusal:
            self._finish(refusal.outcome, refusal.status, started, environ, error=refusal.error)
            span.set("http.response.status_code", refusal.status)
            span.fail(refusal.outcome, refusal.error)
            headers = _REFUSAL_HEADERS.get(refusal.status, [])
            return _json(start_response, refusal.status, {"ok": False, "error": refusal.error}, headers)
        except Exception:  # noqa: BLE001 - an answer, never a traceback page
            log.exception("receiver: unexpected error")
            self._finish("error", 500, started, environ, error="internal error")
            span.set("http.response.status_code", 500)
            span.fail("internal_error")
            return _json(start_response, 500, {"ok": False, "error": "internal error"})
        span.set("http.response.status_code", 200)
        if isinstance(accepted, BatchAccepted):
            span.set(tracing.ATTR_BATCH_COUNT, len(accepted.results))
            self._finish("batch", 200, started, environ, batch=accepted)
            return _json(start_response, 200, accepted.document())
        outcome = "duplicate" if accepted.duplicate else "stored"
        span.set(tracing.ATTR_MESSAGE_ID, accepted.event_id)
        span.set(tracing.ATTR_EVENT_TYPE, accepted.event_type)
        self._finish(outcome, 200, started, environ, accepted=accepted)
        return _json(
            start_response,
            200,
            {"ok": True, "event_id": accepted.event_id, "duplicate": accepted.duplicate},
        )

    def _verified_body(self, environ: Mapping[str, Any], limit: int) -> tuple[bytes, signing.Verified]:
        """The request's body and what its signature proves, after the checks before parsing."""
        _check_method_and_type(environ)
        _check_single_headers(environ)
        body = _read_body(environ, limit)
        headers = _signature_headers(environ)
        try:
            verified = signing.verify(
                self.config.secrets, body, headers, tolerance_seconds=self.config.tolerance_seconds
            )
        except SignatureError as exc:
            raise Refusal(401, str(exc), "unauthorized") from None
        return body, verified

    def _accept(self, environ: Mapping[str, Any], trace: tracing.TraceContext | None) -> Accepted:
        body, verified = self._verified_body(environ, self.config.max_body_bytes)
        envelope = _parse_envelope(_parse_json(body))
        key = _idempotency_key(environ)
        return self._store(envelope, key, verified, trace)

    def _accept_batch(
        self, environ: Mapping[str, Any], trace: tracing.TraceContext | None, span: tracing.Span
    ) -> BatchAccepted:
        body, verified = self._verified_body(environ, self.config.max_batch_bytes)
        document = _parse_json(body)
        try:
            events = parse_batch(document, max_events=self.config.max_batch_events)
        except BatchTooLarge as exc:
            raise Refusal(413, str(exc), "too_large") from None
        except EnvelopeError as exc:
            raise Refusal(400, str(exc), "bad_request") from None
        # Each event's key is in the signed body: the batch is named by its signature, and an
        # x-idempotency-key header (senders before 0.2 sent one) means nothing here.
        span.link_all(event.trace for event in events)
        stored = self._store_batch(events, verified.fingerprint, verified, trace)
        return BatchAccepted([_batch_result(event, stored.get(i)) for i, event in enumerate(events)])

    def _store(
        self,
        envelope: Envelope,
        key: str,
        verified: signing.Verified,
        trace: tracing.TraceContext | None,
    ) -> Accepted:
        result = self._with_database(
            lambda cursor: outbox.record_event(
                cursor,
                envelope,
                idempotency_key=key,
                signature_digest=verified.fingerprint,
                signed=verified,
                max_attempts=self.config.max_attempts,
                trace=trace,
            )
        )
        return Accepted(str(result.event_id), envelope.event_type, result.duplicate)

    def _store_batch(
        self,
        events: list[BatchEvent],
        batch_name: str,
        verified: signing.Verified,
        trace: tracing.TraceContext | None,
    ) -> dict[int, outbox.InsertResult]:
        """Store the batch's valid events in one statement; their results by position. Each
        keeps its own trace context, else the request's (``trace``)."""
        valid = [(i, event) for i, event in enumerate(events) if event.envelope is not None]
        if not valid:
            return {}
        items = [(event.envelope, event.idempotency_key) for _, event in valid]
        results = self._with_database(
            lambda cursor: outbox.record_batch(
                cursor,
                items,  # type: ignore[arg-type]  # valid events have both
                batch_key=batch_name,
                signature_digest=verified.fingerprint,
                signed=verified,
                max_attempts=self.config.max_attempts,
                positions=[position for position, _ in valid],
                traces=[event.trace or trace for _, event in valid],
            )
        )
        return {position: result for (position, _), result in zip(valid, results)}

    def _with_database(self, work: Callable[[Any], Any]) -> Any:
        # Storing is idempotent on the keys, so a retry is safe: at worst the second try answers
        # "duplicate" for what the first one committed. Retried once: a quick failure (a pooled
        # connection the server closed), and a lost race for keys another request holds (the
        # database answers; the other request has usually committed by now). A slow failure
        # means the database is not answering, and the sender is told so at once.
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                with self.database.autocommit() as cursor:
                    return work(cursor)
            except ReplayedSignature as exc:
                raise Refusal(401, str(exc), "replayed") from None
            except InvalidArgument as exc:  # a value the envelope checks let through
                raise Refusal(400, str(exc), "bad_request") from None
            except DatabaseBusy:
                if attempt == 2:
                    raise Refusal(503, "busy with concurrent requests, retry later", "busy") from None
            except DatabaseUnavailable:
                if attempt == 2 or time.monotonic() - started > _QUICK_FAILURE_SECONDS:
                    raise Refusal(503, "database unavailable, retry later", "unavailable") from None
        raise AssertionError("unreachable")

    def _finish(
        self,
        outcome: str,
        status: int,
        started: float,
        environ: Mapping[str, Any],
        *,
        accepted: Accepted | None = None,
        batch: BatchAccepted | None = None,
        error: str | None = None,
    ) -> None:
        """Count the request and log it as one JSON line: when, from where, what came of it,
        and for a refusal why (never the secret, the signature or the payload)."""
        elapsed = time.perf_counter() - started
        self.metrics.observe(outcome, elapsed)
        fields: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "client": environ.get("REMOTE_ADDR", ""),
            "path": environ.get("PATH_INFO", ""),
            "outcome": outcome,
            "status": status,
            "latency_ms": round(elapsed * 1000, 2),
        }
        if environ.get("HTTP_X_FORWARDED_FOR"):  # as a proxy says: the sender may have set it
            fields["forwarded_for"] = str(environ["HTTP_X_FORWARDED_FOR"])[:200]
        if error is not None:
            fields["error"] = error
        if accepted is not None:
            fields.update(event_id=accepted.event_id, event_type=accepted.event_type)
        if batch is not None:
            fields.update(
                stored=batch.count("stored"),
                duplicates=batch.count("duplicate"),
                refused=batch.count("refused"),
            )
        log.info(json.dumps(fields))

    # --- health -----------------------------------------------------------------------------

    def _readyz(self, start_response: StartResponse) -> Iterable[bytes]:
        """Ready to store events: the database answers and has every migration."""
        try:
            with self.database.autocommit() as cursor:
                missing = readiness.missing_migrations(cursor)
        except DatabaseUnavailable:
            return _json(start_response, 503, {"ok": False, "error": "database unavailable"})
        if missing:
            error = f"database misses migration(s) {', '.join(missing)}: run `ipai-bus migrate`"
            return _json(start_response, 503, {"ok": False, "error": error})
        return _json(start_response, 200, {"ok": True})


def _check_method_and_type(environ: Mapping[str, Any]) -> None:
    if environ.get("REQUEST_METHOD") != "POST":
        raise Refusal(405, "method not allowed: use POST", "method_not_allowed")
    media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refusal(415, "content type must be application/json", "unsupported_media_type")


def _check_single_headers(environ: Mapping[str, Any]) -> None:
    """The HTTP front lists headers that came more than once; these must come once."""
    repeated = sorted(environ.get("ipai.repeated_headers") or ())
    if repeated:
        raise Refusal(400, f"{repeated[0]} header must be sent once", "bad_request")


def _read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The raw body, refused with 413 from Content-Length alone when it announces too much."""
    declared = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if declared:
        if not declared.isdigit():
            raise Refusal(400, "invalid Content-Length", "bad_request")
        if int(declared) > limit:
            raise Refusal(413, f"body larger than {limit} bytes", "too_large")
        return bytes(stream.read(int(declared)))
    chunks, size = [], 0
    while size <= limit:  # no length given (chunked): read no more than one byte past the limit
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise Refusal(413, f"body larger than {limit} bytes", "too_large")
    return b"".join(chunks)


def _signature_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    names = {
        signing.TIMESTAMP_HEADER: "HTTP_X_IPAI_TIMESTAMP",
        signing.SIGNATURE_HEADER: "HTTP_X_IPAI_SIGNATURE",
    }
    return {header: environ[key] for header, key in names.items() if key in environ}


def _parse_json(body: bytes) -> Any:
    """The body's JSON, numbers exact (see core.exact_json): what was signed is what is kept."""
    if exact_json.nests_deeper_than(body, MAX_BODY_DEPTH):
        raise Refusal(400, BODY_TOO_DEEP, "bad_request")
    try:
        return exact_json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal(400, "body is not valid UTF-8 JSON", "bad_request") from None


def _parse_envelope(document: Any) -> Envelope:
    try:
        return parse_envelope(document)
    except EnvelopeError as exc:
        raise Refusal(400, str(exc), "bad_request") from None
    except RecursionError:
        raise Refusal(400, TOO_DEEP, "bad_request") from None


def _idempotency_key(environ: Mapping[str, Any]) -> str:
    try:
        return check_idempotency_key(environ.get("HTTP_X_IDEMPOTENCY_KEY"))
    except EnvelopeError as exc:
        raise Refusal(400, str(exc), "bad_request") from None


def _batch_result(event: BatchEvent, stored: outbox.InsertResult | None) -> dict[str, str]:
    if stored is None:
        return {"status": "refused", "error": event.refusal or "not stored"}
    status = "duplicate" if stored.duplicate else "stored"
    return {"status": status, "event_id": str(stored.event_id)}


def _json(
    start_response: StartResponse,
    status: int,
    document: Mapping[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    return _respond(start_response, status, json.dumps(document).encode(), "application/json", headers)


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, '')}".strip(),
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])],
    )
    return [body]
